{{- define "tai.hpa" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
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
  minReplicas: {{ int64 .svc.autoscaling.minReplicas }}
  maxReplicas: {{ int64 .svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ int64 .svc.autoscaling.targetCPUUtilizationPercentage }}
{{- end -}}
