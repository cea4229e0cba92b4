{{/*
The chart's name, or nameOverride.
*/}}
{{- define "maestro.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it
contains the chart's name ("maestro"), else "<release>-<chart>". Cluster-scoped objects
(ClusterRoles, the admission policy) carry it, so two releases never collide.
*/}}
{{- define "maestro.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart-version, the value of the helm.sh/chart label.
*/}}
{{- define "maestro.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "maestro.labels" -}}
helm.sh/chart: {{ include "maestro.chart" . }}
{{ include "maestro.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: maestro
{{- end }}

{{/*
Labels that select the operator's pods.
*/}}
{{- define "maestro.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maestro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "maestro.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "maestro.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag}; an empty tag means the chart's appVersion.
Usage: include "maestro.image" (list .Values.image .Chart.AppVersion)
*/}}
{{- define "maestro.image" -}}
{{- $image := index . 0 }}
{{- $appVersion := index . 1 }}
{{- printf "%s:%s" $image.repository ($image.tag | default $appVersion | toString) }}
{{- end }}

{{/*
Read-only rights on Maestro's resources and on the pods and logs of steps: the rules of
the viewer role, which the runner and approver roles include.
*/}}
{{- define "maestro.viewerRules" -}}
- apiGroups: ["maestro.dev"]
  resources: ["tasks", "compositions", "compositionruns", "agents", "approvals"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- end }}
