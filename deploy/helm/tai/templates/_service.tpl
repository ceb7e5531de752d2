{{- define "tai.service" -}}
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
    - name: grpc
      port: {{ int64 .svc.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ int64 .svc.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end -}}
