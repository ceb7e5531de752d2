{{/* Mode single on SQLite: the volume of the SQLite file (store and bus), one writer. */}}
{{- define "tai.dataClaimResource" -}}
{{- $persistence := .root.Values.server.persistence -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "tai.dataClaim" .root }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
  {{- if $persistence.keepOnUninstall }}
  annotations:
    # The data outlives `helm uninstall`; delete the claim by hand to drop it.
    helm.sh/resource-policy: keep
  {{- end }}
spec:
  accessModes: [ReadWriteOnce]
  {{- with $persistence.storageClassName }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ $persistence.size }}
{{- end -}}
