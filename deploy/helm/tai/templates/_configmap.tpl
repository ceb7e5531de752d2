{{/* A service's TAI_* settings (libs/common/tai_common/core/config.py). */}}
{{- define "tai.configmap" -}}
{{- $root := .root -}}
{{- $config := $root.Values.config -}}
{{- $svc := .svc -}}
{{- $ns := $root.Release.Namespace -}}
{{- $store := printf "firestore://%s" $config.firestore.project -}}
{{- if $config.firestore.database }}{{ $store = printf "%s/%s" $store $config.firestore.database }}{{ end -}}
{{- $env := dict
    "TAI_ENVIRONMENT" $config.environment
    "TAI_HOST" "0.0.0.0"
    "TAI_GRPC_PORT" (int64 $svc.grpcPort | toString)
    "TAI_METRICS_PORT" (int64 $svc.metricsPort | toString)
    "TAI_STORE" $store
    "TAI_BUS" (printf "pubsub://%s" ($config.pubsub.project | default $config.firestore.project))
    "TAI_BUS_CREATE_MISSING" ($config.pubsub.createMissing | toString)
    "TAI_CACHE" ($config.redis.url | default "memory://")
    "TAI_SECRETS" (include "tai.secretsUrl" .)
    "TAI_AUTH" $config.auth
    "TAI_JWT_ISSUER" $config.jwt.issuer
    "TAI_JWT_AUDIENCE" $config.jwt.audience
    "TAI_JWT_ROLES_CLAIM" $config.jwt.rolesClaim
    "TAI_RATE_LIMIT_PER_SECOND" ($config.rateLimit.perSecond | toString)
    "TAI_RATE_LIMIT_BURST" ($config.rateLimit.burst | toString)
    "TAI_RATE_LIMITS" ($config.rateLimit.perMethod | toJson)
    "TAI_TRACE_SAMPLE_RATIO" ($config.traceSampleRatio | toString)
    "TAI_LOG_LEVEL" $config.logLevel
    "TAI_LOG_FORMAT" "json"
    "TAI_SHUTDOWN_GRACE_SECONDS" ($config.shutdownGraceSeconds | toString)
    "TAI_MAX_MESSAGE_BYTES" (int64 $config.maxMessageBytes | toString)
    "TAI_GOVERNOR_TARGET" (printf "tai-governor.%s.svc:%d" $ns (int64 $root.Values.services.governor.grpcPort))
    "TAI_COORDINATOR_TARGET" (printf "tai-coordinator.%s.svc:%d" $ns (int64 $root.Values.services.coordinator.grpcPort))
    "TAI_SCHEDULER_TARGET" (printf "tai-scheduler.%s.svc:%d" $ns (int64 $root.Values.services.scheduler.grpcPort))
-}}
{{- if $config.jwt.jwksUrl }}{{ $_ := set $env "TAI_JWT_JWKS_URL" $config.jwt.jwksUrl }}{{ end -}}
{{- if $config.jwt.jwksSecret }}{{ $_ := set $env "TAI_JWT_JWKS_SECRET" $config.jwt.jwksSecret }}{{ end -}}
{{- if $config.redis.url }}{{ $_ := set $env "TAI_RATE_LIMIT_STORE" $config.redis.url }}{{ end -}}
{{- if $config.otlp.endpoint -}}
{{- $_ := set $env "TAI_OTLP_ENDPOINT" $config.otlp.endpoint -}}
{{- $_ := set $env "TAI_OTLP_PROTOCOL" $config.otlp.protocol -}}
{{- end -}}
{{- if include "tai.needsServiceToken" . }}{{ $_ := set $env "TAI_SERVICE_TOKEN_FILE" (include "tai.serviceTokenFile" .) }}{{ end -}}
{{- range $key, $value := $config.extraEnv }}{{ $_ := set $env $key (toString $value) }}{{ end -}}
{{- range $key, $value := $svc.env }}{{ $_ := set $env $key (toString $value) }}{{ end -}}
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
