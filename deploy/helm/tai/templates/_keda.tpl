{{/*
KEDA ScaledObjects (keda.enabled): each service scales on the pressure docs/deployment.md names,
between its autoscaling.minReplicas and maxReplicas. KEDA makes and owns the
HorizontalPodAutoscaler behind a ScaledObject, so services.yaml renders either this or
tai.hpa for a Deployment, never both.
*/}}

{{/* The range of rate() in the queries. */}}
{{- define "tai.keda.window" -}}
{{ .root.Values.keda.prometheus.rateWindow }}
{{- end -}}

{{/* Selects one service's series as the ServiceMonitor labels them (job = the Service). */}}
{{- define "tai.keda.selector" -}}
namespace="{{ .root.Release.Namespace }}",job="tai-{{ .name }}"
{{- end -}}

{{/*
p99 of a histogram over the window, or 0 when it has no observations (histogram_quantile
gives NaN then, and `> 0` drops NaN): KEDA gets a number either way. ctx: (ctx, metric, matchers).
*/}}
{{- define "tai.keda.p99" -}}
{{- $ctx := index . 0 -}}
histogram_quantile(0.99, sum by (le) (rate({{ index . 1 }}_bucket{ {{- include "tai.keda.selector" $ctx }}{{ index . 2 }}}[{{ include "tai.keda.window" $ctx }}]))) > 0 or vector(0)
{{- end -}}

{{/*
The Coordinator's bus subscriptions: one per replica and topic, named
`<service>-<replica id>-<topic>` (tai_common.messaging.fanout.replica_subscription, called in
tai_coordinator.app for tai-policies and tai-actions), the replica id being the pod's name
(TAI_REPLICA_ID). Stable pods are tai-coordinator-<template hash>-<suffix>; the canary's
(tai-coordinator-canary-…) have one segment more and do not match.
*/}}
{{- define "tai.keda.coordinatorSubscriptions" -}}
coordinator-tai-coordinator-[a-z0-9]+-[a-z0-9]+-tai-(policies|actions)
{{- end -}}

{{/* The Pub/Sub project the services use (config.pubsub.project, else Firestore's). */}}
{{- define "tai.pubsubProject" -}}
{{- .Values.config.pubsub.project | default .Values.config.firestore.project -}}
{{- end -}}

{{/*
The backlog of the Coordinator's subscriptions in Cloud Monitoring's PromQL: undelivered
messages of the most-behind subscription that Pub/Sub still delivers to. A replica that died
without closing leaves its subscription behind (Pub/Sub deletes it only after a day without a
consumer) and that one's backlog only grows: the `and` keeps the subscriptions with
deliveries in the window.
*/}}
{{- define "tai.keda.coordinatorBacklogQuery" -}}
{{- $project := include "tai.pubsubProject" .root -}}
{{- $match := printf "monitored_resource=\"pubsub_subscription\",project_id=\"%s\",subscription_id=~\"%s\"" $project (include "tai.keda.coordinatorSubscriptions" .) -}}
max({__name__="pubsub.googleapis.com/subscription/num_undelivered_messages",{{ $match }}} and on (subscription_id) (sum by (subscription_id) (rate({__name__="pubsub.googleapis.com/subscription/sent_message_count",{{ $match }}}[{{ include "tai.keda.window" . }}])) > 0)) or vector(0)
{{- end -}}

{{/*
The Scheduler's due and unclaimed tasks, as its replicas count them; 0 when no replica is
scraped (an empty answer is an error to KEDA).
*/}}
{{- define "tai.keda.schedulerDueTasksQuery" -}}
max(tai_scheduler_due_tasks{ {{- include "tai.keda.selector" . }}}) or vector(0)
{{- end -}}

{{/* "true" when this service (ctx) scales on the Coordinator's Pub/Sub backlog. */}}
{{- define "tai.keda.coordinatorBacklog" -}}
{{- if and (eq .name "coordinator") .root.Values.keda.coordinator.pubsubBacklog.enabled -}}
true
{{- end -}}
{{- end -}}

{{- define "tai.keda.triggerAuthenticationName" -}}
tai-gcp-workload-identity
{{- end -}}

{{- define "tai.keda.cpuTrigger" -}}
- type: cpu
  metricType: Utilization
  metadata:
    value: {{ int64 .svc.autoscaling.targetCPUUtilizationPercentage | quote }}
    # The service's container only: sidecars (Istio, the Vault agent) do not count.
    containerName: {{ .name }}
{{- end -}}

{{- define "tai.scaledobject" -}}
{{- $keda := .root.Values.keda -}}
{{- $prometheus := $keda.prometheus.serverAddress -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: tai-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: tai-{{ .name }}
  minReplicaCount: {{ int64 .svc.autoscaling.minReplicas }}
  maxReplicaCount: {{ int64 .svc.autoscaling.maxReplicas }}
  pollingInterval: {{ int64 $keda.pollingInterval }}
  triggers:
  {{- if eq .name "governor" }}
    {{- include "tai.keda.cpuTrigger" . | nindent 4 }}
    # Value: replicas grow in proportion to p99 / threshold.
    - type: prometheus
      name: unary-p99-latency
      metricType: Value
      metadata:
        serverAddress: {{ $prometheus }}
        query: {{ include "tai.keda.p99" (list . "grpc_server_handling_seconds" ",grpc_type=\"unary\",grpc_service=\"tai.v1.Governor\"") | quote }}
        threshold: {{ $keda.governor.latencyThresholdSeconds | toString | quote }}
  {{- else if eq .name "coordinator" }}
    {{- if $keda.coordinator.cpu }}
    {{- include "tai.keda.cpuTrigger" . | nindent 4 }}
    {{- end }}
    {{- if include "tai.keda.coordinatorBacklog" . }}
    # Every replica has its own subscriptions and gets every event, so more replicas do not
    # share a backlog: a growing one means a replica too busy to keep up. Value: replicas grow
    # in proportion to the worst backlog / threshold.
    - type: prometheus
      name: pubsub-backlog
      metricType: Value
      metadata:
        serverAddress: {{ $keda.coordinator.pubsubBacklog.serverAddress | default (printf "https://monitoring.googleapis.com/v1/projects/%s/location/global/prometheus" (include "tai.pubsubProject" .root)) }}
        query: {{ include "tai.keda.coordinatorBacklogQuery" . | quote }}
        threshold: {{ $keda.coordinator.pubsubBacklog.threshold | toString | quote }}
      authenticationRef:
        name: {{ include "tai.keda.triggerAuthenticationName" . }}
    {{- end }}
  {{- else if eq .name "scheduler" }}
    # Its queue depth: the tasks due and held by no live lease (tai_scheduler_due_tasks).
    # Every replica counts the same store and reports the same number, hence max, not sum.
    # AverageValue: replicas = ceil(due tasks / dueTasksPerReplica).
    - type: prometheus
      name: due-tasks
      metricType: AverageValue
      metadata:
        serverAddress: {{ $prometheus }}
        query: {{ include "tai.keda.schedulerDueTasksQuery" . | quote }}
        threshold: {{ $keda.scheduler.dueTasksPerReplica | toString | quote }}
  {{- end }}
{{- end -}}

{{/*
KEDA's operator reads Cloud Monitoring with its own Workload Identity (its Kubernetes service
account bound to a Google service account with roles/monitoring.viewer).
*/}}
{{- define "tai.keda.triggerAuthentication" -}}
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata:
  name: {{ include "tai.keda.triggerAuthenticationName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.commonLabels" . | nindent 4 }}
spec:
  podIdentity:
    provider: gcp
{{- end -}}
