{{- define "tai.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: tai-{{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tai.labels" . | nindent 4 }}
spec:
  {{- $max := .svc.pdb.maxUnavailable }}
  maxUnavailable: {{ if kindIs "string" $max }}{{ $max | quote }}{{ else }}{{ int64 $max }}{{ end }}
  # A pod that never became ready may always be evicted (a drain is not held up by a crash loop).
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "tai.selectorLabels" . | nindent 6 }}
      tai.dev/track: stable
{{- end -}}
