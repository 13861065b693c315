{{- define "virtmail.name" -}}virtmail{{- end }}

{{- define "virtmail.fullname" -}}
{{- if contains "virtmail" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-virtmail" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "virtmail.selectorLabels" -}}
app.kubernetes.io/name: virtmail-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "virtmail.labels" -}}
{{ include "virtmail.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: virtmail
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "virtmail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "virtmail.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}
