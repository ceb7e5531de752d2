{{/*
A service's Deployment; ctx.track is "stable" or "canary" (another tag, fixed replicas). In mode
single, the tai-server Deployment (ctx.name "server"): its three gRPC ports, its service tokens,
and with config.backend=sqlite the volume of the SQLite file.
*/}}
{{- define "tai.deployment" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $canary := eq .track "canary" -}}
{{- $server := eq .name "server" -}}
{{- $grpcPorts := include "tai.grpcPorts" . | fromJsonArray -}}
{{- /* One port for the probes: the single process's Scheduler starts last and stops first
(tai_server.app.SERVICES), so its SERVING means all three serve, and its NOT_SERVING is the
first sign of a stop; the three share the one process that liveness checks. */ -}}
{{- $port := int64 (last $grpcPorts).port -}}
{{- $tokens := include "tai.serviceTokens" . | fromJsonArray -}}
{{- $vaultAgent := and $tokens (eq $root.Values.serviceToken.source "vault-agent") -}}
{{- $tokenSecret := and $tokens (eq $root.Values.serviceToken.source "secret") -}}
{{- $vaultLogin := or $root.Values.config.vault.address $vaultAgent -}}
{{- $sqlite := and $server (eq $root.Values.config.backend "sqlite") -}}
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
  {{- else if or $server (not $svc.autoscaling.enabled) }}
  replicas: {{ int64 $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      {{- include "tai.selectorLabels" . | nindent 6 }}
      tai.dev/track: {{ .track }}
  strategy:
    {{- if $sqlite }}
    # The old pod stops before the new one starts: the SQLite file has one owner process (a
    # second one refuses to start), on a ReadWriteOnce volume.
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
    {{- end }}
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
        {{- range $tokens }}
        vault.hashicorp.com/agent-inject-secret-{{ .name }}: {{ $root.Values.serviceToken.vaultPath | quote }}
        vault.hashicorp.com/agent-inject-template-{{ .name }}: {{ printf "{{- with secret %q -}}{{ .Data.data.%s }}{{- end -}}" $root.Values.serviceToken.vaultPath .service | quote }}
        {{- end }}
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
            {{- range $grpcPorts }}
            - name: {{ .name }}
              containerPort: {{ int64 .port }}
              protocol: TCP
            {{- end }}
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
          {{- if $server }}
          # On the Scheduler's port: the last of the three to start, the first to stop.
          {{- end }}
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
            - name: service-token{{ if $server }}s{{ end }}
              mountPath: /var/run/secrets/tai
              readOnly: true
            {{- end }}
            {{- if $sqlite }}
            - name: data
              mountPath: {{ include "tai.dataDir" $root }}
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
        {{- if and $tokenSecret $server }}
        # The Secrets of the services the process calls as (tai-<service>-token, as in mode
        # services), one file each.
        - name: service-tokens
          projected:
            defaultMode: 0440
            sources:
              {{- range $tokens }}
              - secret:
                  name: tai-{{ .service }}-token
                  items:
                    - key: token
                      path: {{ .name }}
              {{- end }}
        {{- else if $tokenSecret }}
        - name: service-token
          secret:
            secretName: tai-{{ .name }}-token
            defaultMode: 0440
            items:
              - key: token
                path: service-token
        {{- end }}
        {{- if $sqlite }}
        - name: data
          persistentVolumeClaim:
            claimName: {{ include "tai.dataClaim" $root }}
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
