{{- define "modelstamp.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelstamp.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelstamp.tokenSecret" -}}
{{- if .Values.modelstamp.adminTokenSecret -}}
{{ .Values.modelstamp.adminTokenSecret }}
{{- else -}}
{{ include "modelstamp.fullname" . }}-admin
{{- end -}}
{{- end -}}
