{{/*
What a service's pods may send and receive, on top of the release's default deny
(networkpolicy-deny.yaml): its gRPC port from the ingress gateway, the other TAI services and
networkPolicy.extraIngress; its metrics port from Prometheus; out: DNS, the other services'
gRPC ports, and each configured dependency on its ports. In mode single, the tai-server pods:
the three gRPC ports and the one metrics port (the services' calls to each other stay on the
pod's loopback, which no NetworkPolicy filters).
*/}}
{{- define "tai.networkpolicy" -}}
{{- $root := .root -}}
{{- $np := $root.Values.networkPolicy -}}
{{- $egress := $np.egress -}}
{{- $config := $root.Values.config -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: tai-{{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "tai.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - namespaceSelector:
            {{- toYaml $np.gateway.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.gateway.podSelector | nindent 12 }}
        - podSelector:
            matchLabels:
              {{- include "tai.releaseSelector" $root | nindent 14 }}
        {{- with $np.extraIngress }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- range include "tai.grpcPorts" . | fromJsonArray }}
        - port: {{ int64 .port }}
          protocol: TCP
        {{- end }}
    - from:
        - namespaceSelector:
            {{- toYaml $np.prometheus.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.prometheus.podSelector | nindent 12 }}
      ports:
        - port: {{ int64 .svc.metricsPort }}
          protocol: TCP
  egress:
    - to:
        - namespaceSelector:
            {{- toYaml $np.dns.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.dns.podSelector | nindent 12 }}
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    - to:
        - podSelector:
            matchLabels:
              {{- include "tai.releaseSelector" $root | nindent 14 }}
      ports:
        {{- range $other := include "tai.serviceNames" $root | fromJsonArray }}
        - port: {{ int64 (index $root.Values.services $other).grpcPort }}
          protocol: TCP
        {{- end }}
    {{- if eq $config.backend "firestore" }}
    {{- include "tai.egressRule" $egress.googleApis }}
    {{- end }}
    {{- if or $config.redis.url $config.redis.urlSecret.name }}
    {{- include "tai.egressRule" $egress.redis }}
    {{- end }}
    {{- if or $config.vault.address (eq $root.Values.serviceToken.source "vault-agent") }}
    {{- include "tai.egressRule" $egress.vault }}
    {{- end }}
    {{- if $config.otlp.endpoint }}
    {{- include "tai.egressRule" $egress.otlp }}
    {{- end }}
    {{- if $egress.metadataServer.enabled }}
    - to:
        - ipBlock:
            cidr: {{ $egress.metadataServer.cidr }}
      ports:
        {{- range $egress.metadataServer.ports }}
        - port: {{ int64 . }}
          protocol: TCP
        {{- end }}
    {{- end }}
    {{- if $root.Values.istio.enabled }}
    {{- include "tai.egressRule" $egress.istiod }}
    {{- end }}
    {{- with $egress.extra }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* One egress rule: {ports, to}; no `to` = any address on those ports. */}}
{{- define "tai.egressRule" }}
    - ports:
        {{- range .ports }}
        - port: {{ int64 . }}
          protocol: TCP
        {{- end }}
      {{- with .to }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
