{{/* The destination(s) of a service's routes: one, or stable and canary subsets by weight. */}}
{{- define "tai.routeDestinations" -}}
{{- $destination := dict "host" (include "tai.host" .) "port" (dict "number" (int64 .svc.grpcPort)) -}}
route:
{{- if .svc.canary.enabled }}
  - destination:
      {{- toYaml (merge (dict "subset" "stable") $destination) | nindent 6 }}
    weight: {{ sub 100 (int64 .svc.canary.weight) }}
  - destination:
      {{- toYaml (merge (dict "subset" "canary") $destination) | nindent 6 }}
    weight: {{ int64 .svc.canary.weight }}
{{- else }}
  - destination:
      {{- toYaml $destination | nindent 6 }}
{{- end }}
{{- end -}}
