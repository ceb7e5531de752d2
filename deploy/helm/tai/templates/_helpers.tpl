{{/*
Shared helpers. Per-service templates take a context dict built once per service in
services.yaml: {root: $, name: "governor", svc: <defaults merged with services.governor>}. In
mode single the one workload's templates take the same kind of context, built in server.yaml:
{root: $, name: "server", svc: <defaults merged with server>}.
*/}}

{{/* "true" in mode single: the three services in one tai-server process (server.yaml). */}}
{{- define "tai.single" -}}
{{- if eq .Values.mode "single" -}}
true
{{- end -}}
{{- end -}}

{{/* The single process's settings: `defaults` deep-merged with `server`. */}}
{{- define "tai.serverSettings" -}}
{{- mergeOverwrite (deepCopy .Values.defaults) (deepCopy .Values.server) | toJson -}}
{{- end -}}

{{/*
The pods that serve a service (ctx): its own, or in mode single the tai-server pods. The
service's Service, AuthorizationPolicy and the like select them.
*/}}
{{- define "tai.servingSelectorLabels" -}}
{{- if include "tai.single" .root -}}
{{ include "tai.selectorLabels" (dict "root" .root "name" "server") }}
{{- else -}}
{{ include "tai.selectorLabels" . }}
{{- end -}}
{{- end -}}

{{/* The metrics port of the pods that serve a service (ctx). */}}
{{- define "tai.servingMetricsPort" -}}
{{- if include "tai.single" .root -}}
{{ int64 .root.Values.server.metricsPort }}
{{- else -}}
{{ int64 .svc.metricsPort }}
{{- end -}}
{{- end -}}

{{/*
The gRPC ports a workload (ctx) listens on, as [{name, port}]: a service's one ("grpc"), or the
single process's three, each named after its service.
*/}}
{{- define "tai.grpcPorts" -}}
{{- $root := .root -}}
{{- if eq .name "server" -}}
{{- $ports := list -}}
{{- range $name := include "tai.serviceNames" $root | fromJsonArray -}}
{{- $ports = append $ports (dict "name" $name "port" (int64 (index $root.Values.services $name).grpcPort)) -}}
{{- end -}}
{{- $ports | toJson -}}
{{- else -}}
{{- list (dict "name" "grpc" "port" (int64 .svc.grpcPort)) | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The service tokens a workload (ctx) presents, as [{service, name, file}]: `name` is the file's
name under its folder, for the Vault agent's annotations and the Secret's projection. A service
has at most one (tai.serviceTokenFile); the single process has one per calling service, passed
on in TAI_SERVICE_TOKEN_FILES.
*/}}
{{- define "tai.serviceTokens" -}}
{{- $root := .root -}}
{{- $tokens := list -}}
{{- if eq .name "server" -}}
{{- range $caller := keys (include "tai.serviceCalls" $root | fromJson) | sortAlpha -}}
{{- $callerCtx := dict "root" $root "name" $caller -}}
{{- if include "tai.needsServiceToken" $callerCtx -}}
{{- $file := printf "%s-token" $caller -}}
{{- $folder := ternary "/vault/secrets" "/var/run/secrets/tai" (eq $root.Values.serviceToken.source "vault-agent") -}}
{{- $tokens = append $tokens (dict "service" $caller "name" $file "file" (printf "%s/%s" $folder $file)) -}}
{{- end -}}
{{- end -}}
{{- else if include "tai.needsServiceToken" . -}}
{{- $tokens = append $tokens (dict "service" .name "name" "service-token" "file" (include "tai.serviceTokenFile" .)) -}}
{{- end -}}
{{- $tokens | toJson -}}
{{- end -}}

{{/* Where the single process keeps the SQLite file (config.backend=sqlite). */}}
{{- define "tai.dataDir" -}}
/var/lib/tai
{{- end -}}

{{/* The claim holding the SQLite file. */}}
{{- define "tai.dataClaim" -}}
{{- .Values.server.persistence.existingClaim | default "tai-server-data" -}}
{{- end -}}

{{/* The services, in a fixed order. */}}
{{- define "tai.serviceNames" -}}
{{- list "governor" "coordinator" "scheduler" | toJson -}}
{{- end -}}

{{/* A service's settings: `defaults` deep-merged with its entry in `services`. */}}
{{- define "tai.serviceSettings" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- mergeOverwrite (deepCopy $root.Values.defaults) (deepCopy (index $root.Values.services $name)) | toJson -}}
{{- end -}}

{{/*
The internal calls each service makes with its own identity, without a user token: a copy of
SERVICE_CALLS in libs/common/tai_common/auth/access.py (tests/deploy checks they agree).
*/}}
{{- define "tai.serviceCalls" -}}
{{- dict
    "scheduler" (list "/tai.v1.Governor/EnforcePolicy" "/tai.v1.Governor/RevokePolicy" "/tai.v1.Coordinator/RequestAction")
    "coordinator" (list "/tai.v1.Governor/GetPolicies" "/tai.v1.Governor/GetPolicy")
  | toJson -}}
{{- end -}}

{{/* The gRPC service each TAI service serves. */}}
{{- define "tai.grpcService" -}}
{{- get (dict "governor" "tai.v1.Governor" "coordinator" "tai.v1.Coordinator" "scheduler" "tai.v1.Scheduler") . -}}
{{- end -}}

{{/*
What the gateway routes to each service: its gRPC prefix, and the JSON paths of its
google.api.http annotations (protos/tai/v1/*.proto; tests/deploy checks every one is routed).
*/}}
{{- define "tai.routes" -}}
{{- dict
    "governor" (list
      (dict "prefix" "/tai.v1.Governor/")
      (dict "prefix" "/v1/policies")
      (dict "prefix" "/v1/audit")
      (dict "prefix" "/v1/namespaces")
      (dict "exact" "/v1/governor:health"))
    "coordinator" (list
      (dict "prefix" "/tai.v1.Coordinator/")
      (dict "prefix" "/v1/signals")
      (dict "prefix" "/v1/actions")
      (dict "prefix" "/v1/services/")
      (dict "exact" "/v1/simulations")
      (dict "exact" "/v1/status")
      (dict "prefix" "/v1/silences")
      (dict "exact" "/v1/coordinator:health"))
    "scheduler" (list
      (dict "prefix" "/tai.v1.Scheduler/")
      (dict "prefix" "/v1/tasks")
      (dict "exact" "/v1/scheduler:health"))
  | toJson -}}
{{- end -}}

{{/* Paths open to everyone, as in tai_common.auth.access (health; the seed's HealthCheck). */}}
{{- define "tai.openPaths" -}}
{{- $svc := include "tai.grpcService" . -}}
{{- list "/grpc.health.v1.Health/*" (printf "/%s/HealthCheck" $svc) (printf "/v1/%s:health" .) | toJson -}}
{{- end -}}

{{- define "tai.host" -}}
{{- $ctx := . -}}
tai-{{ $ctx.name }}.{{ $ctx.root.Release.Namespace }}.svc.cluster.local
{{- end -}}

{{- define "tai.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of everything the chart renders (ctx: {root, name?}). */}}
{{- define "tai.commonLabels" -}}
helm.sh/chart: {{ include "tai.chart" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: tai
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels of one service's resources. */}}
{{- define "tai.labels" -}}
{{ include "tai.commonLabels" . }}
app.kubernetes.io/name: tai-{{ .name }}
app.kubernetes.io/component: {{ .name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end -}}

{{/* Every pod of one service (stable and canary): Service, NetworkPolicy, ServiceMonitor. */}}
{{- define "tai.selectorLabels" -}}
app.kubernetes.io/name: tai-{{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Every pod of the release. */}}
{{- define "tai.releaseSelector" -}}
app.kubernetes.io/part-of: tai
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image of a service (ctx, tag). */}}
{{- define "tai.image" -}}
{{- $ctx := index . 0 -}}
{{- $tag := index . 1 | default $ctx.svc.image.tag | default $ctx.root.Chart.AppVersion -}}
{{- $registry := $ctx.root.Values.imageRegistry -}}
{{- if $registry -}}
{{ trimSuffix "/" $registry }}/{{ $ctx.svc.image.repository }}:{{ $tag }}
{{- else -}}
{{ $ctx.svc.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* Whether a service presents a token on its calls to the other services. */}}
{{- define "tai.needsServiceToken" -}}
{{- $calls := include "tai.serviceCalls" . | fromJson -}}
{{- $root := .root -}}
{{- if and (hasKey $calls .name) (eq $root.Values.config.auth "jwt") (ne $root.Values.serviceToken.source "none") -}}
true
{{- end -}}
{{- end -}}

{{- define "tai.serviceTokenFile" -}}
{{- if eq .root.Values.serviceToken.source "vault-agent" -}}
/vault/secrets/service-token
{{- else -}}
/var/run/secrets/tai/service-token
{{- end -}}
{{- end -}}

{{/* The Vault role a service logs in with. */}}
{{- define "tai.vaultRole" -}}
{{- .root.Values.config.vault.role | default (printf "tai-%s" .name) -}}
{{- end -}}

{{- define "tai.vaultCaDir" -}}
/etc/tai/vault-ca
{{- end -}}

{{/* TAI_SECRETS for a service. */}}
{{- define "tai.secretsUrl" -}}
{{- $vault := .root.Values.config.vault -}}
{{- if $vault.address -}}
{{- $url := urlParse $vault.address -}}
{{- $query := list (printf "auth=kubernetes") (printf "role=%s" (include "tai.vaultRole" .)) (printf "auth_mount=%s" $vault.authMount) (printf "mount=%s" $vault.mount) (printf "prefix=%s" $vault.prefix) (printf "tls=%s" (ternary "1" "0" (eq $url.scheme "https"))) -}}
{{- if $vault.caSecret.name -}}{{- $query = append $query (printf "ca=%s/%s" (include "tai.vaultCaDir" .) $vault.caSecret.key) -}}{{- end -}}
{{- if $vault.namespace -}}{{- $query = append $query (printf "namespace=%s" $vault.namespace) -}}{{- end -}}
vault://{{ $url.host }}?{{ join "&" $query }}
{{- else -}}
env://
{{- end -}}
{{- end -}}

{{/*
Checks values that values.schema.json cannot express (it cannot compare two fields, and a
service's settings are only known once merged with the defaults). In mode single a service's
own workload settings are not used, and only what would silently not apply is refused.
*/}}
{{- define "tai.validate" -}}
{{- $svc := .svc -}}
{{- $root := .root -}}
{{- $where := printf "services.%s (merged with defaults)" .name -}}
{{- if include "tai.single" $root -}}
{{- if $svc.canary.enabled -}}
{{- fail (printf "%s: canary.enabled does not apply to mode single (one Deployment runs the three services)" $where) -}}
{{- end -}}
{{- else -}}
{{- if gt (int64 $svc.autoscaling.minReplicas) (int64 $svc.autoscaling.maxReplicas) -}}
{{- fail (printf "%s: autoscaling.minReplicas (%d) must not be greater than autoscaling.maxReplicas (%d)" $where (int64 $svc.autoscaling.minReplicas) (int64 $svc.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- include "tai.validateDrain" (list $root $svc $where) -}}
{{- if and $svc.canary.enabled (not $root.Values.istio.enabled) -}}
{{- fail (printf "%s: canary.enabled needs istio.enabled (the traffic split is an Istio route)" $where) -}}
{{- end -}}
{{- if and $svc.canary.enabled (not $svc.canary.tag) -}}
{{- fail (printf "%s: canary.enabled needs canary.tag (the image tag under test)" $where) -}}
{{- end -}}
{{- if and $root.Values.keda.enabled $svc.autoscaling.enabled (eq .name "coordinator") (not $root.Values.keda.coordinator.cpu) (not $root.Values.keda.coordinator.pubsubBacklog.enabled) -}}
{{- fail "keda.coordinator: cpu and pubsubBacklog.enabled are both off, which leaves the Coordinator's ScaledObject without a trigger" -}}
{{- end -}}
{{- if eq $root.Values.config.backend "sqlite" -}}
{{- fail "config.backend=sqlite needs mode=single: the SQLite file is on one volume, which one process opens" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $root.Values.config.auth "off") (not $root.Values.dev.allowInsecure) -}}
{{- fail "config.auth=off turns authentication off; it needs dev.allowInsecure=true and is never for production" -}}
{{- end -}}
{{- end -}}

{{/* The single process's own checks (ctx: the server's). */}}
{{- define "tai.validateServer" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- include "tai.validateDrain" (list $root $svc "server (merged with defaults)") -}}
{{- if and (eq $root.Values.config.backend "sqlite") (ne (int64 $svc.replicas) 1) -}}
{{- fail (printf "server.replicas (%d) must be 1 with config.backend=sqlite: one process owns the SQLite file (more replicas need config.backend=firestore)" (int64 $svc.replicas)) -}}
{{- end -}}
{{- if $root.Values.keda.enabled -}}
{{- fail "keda.enabled does not apply to mode single: the one Deployment has fixed replicas (server.replicas)" -}}
{{- end -}}
{{- end -}}

{{/* A pod's grace period covers its preStop sleep and its drain: (root, settings, where). */}}
{{- define "tai.validateDrain" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $drain := add (int64 $svc.preStopSleepSeconds) (int64 (ceil $root.Values.config.shutdownGraceSeconds)) -}}
{{- if lt (int64 $svc.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%d) must cover preStopSleepSeconds + config.shutdownGraceSeconds (%d)" (index . 2) (int64 $svc.terminationGracePeriodSeconds) $drain) -}}
{{- end -}}
{{- end -}}
