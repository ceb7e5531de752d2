{{/*
A workload's TAI_* settings (libs/common/tai_common/core/config.py): a service's, or in mode
single the tai-server process's (services/server/tai_server/app.py ServerSettings), which has a
gRPC port per service (TAI_<SERVICE>_GRPC_PORT) and no TAI_<SERVICE>_TARGET: its services call
each other on loopback.
*/}}
{{- define "tai.configmap" -}}
{{- $root := .root -}}
{{- $config := $root.Values.config -}}
{{- $svc := .svc -}}
{{- $ns := $root.Release.Namespace -}}
{{- $server := eq .name "server" -}}
{{- $env := dict
    "TAI_ENVIRONMENT" $config.environment
    "TAI_HOST" "0.0.0.0"
    "TAI_CACHE" ($config.redis.url | default "memory://")
    "TAI_SECRETS" (include "tai.secretsUrl" .)
    "TAI_AUTH" $config.auth
    "TAI_JWT_ISSUER" $config.jwt.issuer
    "TAI_JWT_AUDIENCE" $config.jwt.audience
    "TAI_JWT_ROLES_CLAIM" $config.jwt.rolesClaim
    "TAI_JWT_NAMESPACES_CLAIM" $config.jwt.namespacesClaim
    "TAI_MAX_NAMESPACES" ($config.namespaces.max | toString)
    "TAI_NAMESPACE_METRIC_LABELS" ($config.namespaces.metricLabels | toString)
    "TAI_NAMESPACE_MAX_ENFORCED_POLICIES" ($config.namespaces.defaultQuotas.maxEnforcedPolicies | toString)
    "TAI_NAMESPACE_MAX_SIGNALS_PER_SECOND" ($config.namespaces.defaultQuotas.maxSignalsPerSecond | toString)
    "TAI_NAMESPACE_MAX_OPEN_TASKS" ($config.namespaces.defaultQuotas.maxOpenTasks | toString)
    "TAI_RATE_LIMIT_PER_SECOND" ($config.rateLimit.perSecond | toString)
    "TAI_RATE_LIMIT_BURST" ($config.rateLimit.burst | toString)
    "TAI_RATE_LIMITS" ($config.rateLimit.perMethod | toJson)
    "TAI_TRACE_SAMPLE_RATIO" ($config.traceSampleRatio | toString)
    "TAI_LOG_LEVEL" $config.logLevel
    "TAI_LOG_FORMAT" "json"
    "TAI_SHUTDOWN_GRACE_SECONDS" ($config.shutdownGraceSeconds | toString)
    "TAI_MAX_MESSAGE_BYTES" (int64 $config.maxMessageBytes | toString)
-}}
{{- if eq $config.backend "sqlite" -}}
{{- $db := printf "sqlite:///%s/tai.db" (include "tai.dataDir" .root) -}}
{{- $_ := set $env "TAI_STORE" $db -}}
{{- $_ := set $env "TAI_BUS" $db -}}
{{- else -}}
{{- $store := printf "firestore://%s" $config.firestore.project -}}
{{- if $config.firestore.database }}{{ $store = printf "%s/%s" $store $config.firestore.database }}{{ end -}}
{{- $_ := set $env "TAI_STORE" $store -}}
{{- $_ := set $env "TAI_BUS" (printf "pubsub://%s" ($config.pubsub.project | default $config.firestore.project)) -}}
{{- $_ := set $env "TAI_BUS_CREATE_MISSING" ($config.pubsub.createMissing | toString) -}}
{{- end -}}
{{- if $server -}}
{{- $_ := set $env "TAI_METRICS_PORT" (int64 $svc.metricsPort | toString) -}}
{{- range (include "tai.grpcPorts" . | fromJsonArray) -}}
{{- $_ := set $env (printf "TAI_%s_GRPC_PORT" (upper .name)) (int64 .port | toString) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $env "TAI_GRPC_PORT" (int64 $svc.grpcPort | toString) -}}
{{- $_ := set $env "TAI_METRICS_PORT" (int64 $svc.metricsPort | toString) -}}
{{- range $other := include "tai.serviceNames" $root | fromJsonArray -}}
{{- $_ := set $env (printf "TAI_%s_TARGET" (upper $other)) (printf "tai-%s.%s.svc:%d" $other $ns (int64 (index $root.Values.services $other).grpcPort)) -}}
{{- end -}}
{{- end -}}
{{- if $config.jwt.jwksUrl }}{{ $_ := set $env "TAI_JWT_JWKS_URL" $config.jwt.jwksUrl }}{{ end -}}
{{- if $config.jwt.jwksSecret }}{{ $_ := set $env "TAI_JWT_JWKS_SECRET" $config.jwt.jwksSecret }}{{ end -}}
{{- if $config.redis.url }}{{ $_ := set $env "TAI_RATE_LIMIT_STORE" $config.redis.url }}{{ end -}}
{{- if $config.otlp.endpoint -}}
{{- $_ := set $env "TAI_OTLP_ENDPOINT" $config.otlp.endpoint -}}
{{- $_ := set $env "TAI_OTLP_PROTOCOL" $config.otlp.protocol -}}
{{- end -}}
{{- $tokens := include "tai.serviceTokens" . | fromJsonArray -}}
{{- if $server -}}
{{- if $tokens -}}
{{- $files := dict -}}
{{- range $tokens }}{{ $_ := set $files .service .file }}{{ end -}}
{{- $_ := set $env "TAI_SERVICE_TOKEN_FILES" ($files | toJson) -}}
{{- end -}}
{{- else if $tokens -}}
{{- $_ := set $env "TAI_SERVICE_TOKEN_FILE" (first $tokens).file -}}
{{- end -}}
{{- range $key, $value := $config.extraEnv }}{{ $_ := set $env $key (toString $value) }}{{ end -}}
{{- if $server -}}
{{- /* One process's environment for the three: defaults.env, each service's env (they must
agree on a key they share), then server.env. */ -}}
{{- range $key, $value := $root.Values.defaults.env }}{{ $_ := set $env $key (toString $value) }}{{ end -}}
{{- $byService := dict -}}
{{- range $name := include "tai.serviceNames" $root | fromJsonArray -}}
{{- range $key, $value := (index $root.Values.services $name).env | default dict -}}
{{- if and (hasKey $byService $key) (ne (get $env $key) (toString $value)) -}}
{{- fail (printf "services.%s.env.%s and services.%s.env.%s differ: in mode single the three services share one process's environment (set it once, in server.env)" (get $byService $key) $key $name $key) -}}
{{- end -}}
{{- $_ := set $byService $key $name -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := $root.Values.server.env | default dict }}{{ $_ := set $env $key (toString $value) }}{{ end -}}
{{- else -}}
{{- range $key, $value := $svc.env }}{{ $_ := set $env $key (toString $value) }}{{ end -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: tai-{{ .name }}-config
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
data:
  {{- range $key := keys $env | sortAlpha }}
  {{ $key }}: {{ get $env $key | quote }}
  {{- end }}
{{- end -}}
