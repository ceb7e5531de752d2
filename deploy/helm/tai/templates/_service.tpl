{{/*
A service's Service, tai-<service>: the name and gRPC port its clients, the other services and
the Istio routes use. In mode single it selects the tai-server pods (its gRPC port there is the
container port named after the service) and has no metrics port: the one process's metrics are
on the Service tai-server (tai.serverMetricsService), scraped once.
*/}}
{{- define "tai.service" -}}
{{- $single := include "tai.single" .root -}}
apiVersion: v1
kind: Service
metadata:
  name: tai-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "tai.servingSelectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int64 .svc.grpcPort }}
      targetPort: {{ ternary .name "grpc" (not (empty $single)) }}
      protocol: TCP
      appProtocol: grpc
    {{- if not $single }}
    - name: metrics
      port: {{ int64 .svc.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end -}}

{{/* Mode single: the Service of the one metrics port (ctx: the server's), for the ServiceMonitor. */}}
{{- define "tai.serverMetricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: tai-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "tai.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ int64 .svc.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end -}}
