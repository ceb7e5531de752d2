{{/* A service's Deployment; ctx.track is "stable" or "canary" (another tag, fixed replicas). */}}
{{- define "tai.deployment" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $canary := eq .track "canary" -}}
{{- $port := int64 $svc.grpcPort -}}
{{- $vaultAgent := and (include "tai.needsServiceToken" .) (eq $root.Values.serviceToken.source "vault-agent") -}}
{{- $tokenSecret := and (include "tai.needsServiceToken" .) (eq $root.Values.serviceToken.source "secret") -}}
{{- $vaultLogin := or $root.Values.config.vault.address $vaultAgent -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tai-{{ .name }}{{ if $canary }}-canary{{ end }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
    tai.dev/track: {{ .track }}
spec:
  {{- if $canary }}
  replicas: {{ int64 $svc.canary.replicas }}
  {{- else if not $svc.autoscaling.enabled }}
  replicas: {{ int64 $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      {{- include "tai.selectorLabels" . | nindent 6 }}
      tai.dev/track: {{ .track }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "tai.selectorLabels" . | nindent 8 }}
        tai.dev/track: {{ .track }}
        app.kubernetes.io/part-of: tai
        app.kubernetes.io/component: {{ .name }}
        app.kubernetes.io/version: {{ ternary $svc.canary.tag ($svc.image.tag | default $root.Chart.AppVersion) $canary | quote }}
        {{- if $root.Values.istio.enabled }}
        sidecar.istio.io/inject: "true"
        {{- end }}
        {{- with $svc.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "tai.configmap" . | sha256sum }}
        {{- if $root.Values.istio.enabled }}
        # The service reaches Firestore, Pub/Sub and Vault while starting: not before its proxy is up.
        proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true}'
        {{- if $vaultLogin }}
        # Vault is outside the mesh, and the agent's init container runs before the proxy.
        traffic.sidecar.istio.io/excludeOutboundPorts: {{ join "," $root.Values.networkPolicy.egress.vault.ports | quote }}
        {{- end }}
        {{- end }}
        {{- if $vaultAgent }}
        vault.hashicorp.com/agent-inject: "true"
        vault.hashicorp.com/role: {{ include "tai.vaultRole" . | quote }}
        vault.hashicorp.com/agent-inject-secret-service-token: {{ $root.Values.serviceToken.vaultPath | quote }}
        vault.hashicorp.com/agent-inject-template-service-token: {{ printf "{{- with secret %q -}}{{ .Data.data.%s }}{{- end -}}" $root.Values.serviceToken.vaultPath .name | quote }}
        vault.hashicorp.com/agent-run-as-user: "10001"
        vault.hashicorp.com/agent-run-as-group: "10001"
        {{- with $root.Values.vaultAgent.annotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- end }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: tai-{{ .name }}
      # The token is needed only to log in to Vault (the services' Kubernetes auth, the agent).
      automountServiceAccountToken: {{ ternary "true" "false" (not (empty $vaultLogin)) }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $svc.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ int64 $svc.terminationGracePeriodSeconds }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        seccompProfile:
          type: RuntimeDefault
      {{- if $svc.topologySpread.enabled }}
      topologySpreadConstraints:
        - topologyKey: topology.kubernetes.io/zone
          maxSkew: {{ int64 $svc.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $svc.topologySpread.zone }}
          labelSelector:
            matchLabels:
              {{- include "tai.selectorLabels" . | nindent 14 }}
              tai.dev/track: {{ .track }}
          matchLabelKeys: [pod-template-hash]
        - topologyKey: kubernetes.io/hostname
          maxSkew: {{ int64 $svc.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $svc.topologySpread.node }}
          labelSelector:
            matchLabels:
              {{- include "tai.selectorLabels" . | nindent 14 }}
              tai.dev/track: {{ .track }}
          matchLabelKeys: [pod-template-hash]
      {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "tai.image" (list . (ternary $svc.canary.tag "" $canary)) | quote }}
          imagePullPolicy: {{ $svc.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ int64 $svc.metricsPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: tai-{{ .name }}-config
          env:
            # Names this replica's subscriptions and task leases.
            - name: TAI_REPLICA_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: PYTHONDONTWRITEBYTECODE
              value: "1"
            {{- with $root.Values.config.redis.urlSecret }}
            {{- if .name }}
            {{- range list "TAI_CACHE" "TAI_RATE_LIMIT_STORE" }}
            - name: {{ . }}
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.config.redis.urlSecret.name }}
                  key: {{ $root.Values.config.redis.urlSecret.key }}
            {{- end }}
            {{- end }}
            {{- end }}
          # Native gRPC probes against the standard health service ("" = the whole server):
          # SERVING once the dependencies are reachable, NOT_SERVING from SIGTERM on.
          startupProbe:
            grpc:
              port: {{ $port }}
              service: ""
            periodSeconds: {{ int64 $svc.probes.startup.periodSeconds }}
            failureThreshold: {{ int64 $svc.probes.startup.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $port }}
              service: ""
            periodSeconds: {{ int64 $svc.probes.readiness.periodSeconds }}
            failureThreshold: {{ int64 $svc.probes.readiness.failureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $port }}
              service: ""
            periodSeconds: {{ int64 $svc.probes.liveness.periodSeconds }}
            failureThreshold: {{ int64 $svc.probes.liveness.failureThreshold }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ int64 $svc.preStopSleepSeconds }}"]
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            runAsNonRoot: true
            runAsUser: 10001
            runAsGroup: 10001
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            privileged: false
            capabilities:
              drop: [ALL]
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $tokenSecret }}
            - name: service-token
              mountPath: /var/run/secrets/tai
              readOnly: true
            {{- end }}
            {{- if and $root.Values.config.vault.address $root.Values.config.vault.caSecret.name }}
            - name: vault-ca
              mountPath: {{ include "tai.vaultCaDir" . }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if $tokenSecret }}
        - name: service-token
          secret:
            secretName: tai-{{ .name }}-token
            defaultMode: 0440
            items:
              - key: token
                path: service-token
        {{- end }}
        {{- with $root.Values.config.vault.caSecret }}
        {{- if and $root.Values.config.vault.address .name }}
        - name: vault-ca
          secret:
            secretName: {{ .name }}
            items:
              - key: {{ .key }}
                path: {{ .key }}
        {{- end }}
        {{- end }}
{{- end -}}
