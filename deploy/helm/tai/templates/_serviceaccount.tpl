{{/* tai-<service>: the identity the mesh (spiffe://<td>/ns/<ns>/sa/tai-<service>), Vault's
Kubernetes auth and GKE Workload Identity know the service by. */}}
{{- define "tai.serviceaccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: tai-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
  {{- with .svc.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}
