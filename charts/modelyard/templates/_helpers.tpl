{{/*
Helpers carry the chart's name as prefix: `define` names are global across subcharts.
*/}}

{{/* Chart name, overridable. */}}
{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: honours fullnameOverride, does not repeat the release name, 63 characters at most
(DNS label limit). Component names append a suffix, so the base leaves room for it.
*/}}
{{- define "modelyard.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>, 63 characters at most. */}}
{{- define "modelyard.componentName" -}}
{{- $base := include "modelyard.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .component }}
{{- end }}

{{/* Chart label value. */}}
{{- define "modelyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (immutable on Deployments: only name and instance, plus the component). */}}
{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{/* Selector labels of one component. Call with (dict "root" $ "component" "router"). */}}
{{- define "modelyard.componentSelectorLabels" -}}
{{ include "modelyard.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "modelyard.labels" -}}
helm.sh/chart: {{ include "modelyard.chart" . }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: modelyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component's objects. Call with (dict "root" $ "component" "router"). */}}
{{- define "modelyard.componentLabels" -}}
{{ include "modelyard.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* ServiceAccount names, per component. */}}
{{- define "modelyard.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "modelyard.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelyard.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "modelyard.componentName" (dict "root" . "component" "router")) .Values.router.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. Call with (dict "root" $ "image" .Values.image). */}}
{{- define "modelyard.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Leader election is on whenever more than one operator replica runs. */}}
{{- define "modelyard.operator.leaderElection" -}}
{{- if or .Values.operator.leaderElection.enabled (gt (int .Values.operator.replicas) 1) }}true{{ else }}false{{ end }}
{{- end }}

{{/* Name of the API-key Secret the router reads. */}}
{{- define "modelyard.router.apiKeySecretName" -}}
{{- default (include "modelyard.componentName" (dict "root" . "component" "api-keys")) .Values.router.apiKeys.existingSecret }}
{{- end }}

{{/* Comma-separated watched namespaces ("" = cluster-wide). */}}
{{- define "modelyard.watchNamespaces" -}}
{{- join "," .Values.watchNamespaces }}
{{- end }}

{{/* Shared pod pieces: the writable /tmp of a read-only root filesystem. */}}
{{- define "modelyard.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{/* NetworkPolicy peers allowed to reach the pods that serve models: router, operator, Prometheus. */}}
{{- define "modelyard.networkPolicy.from" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "modelyard.componentSelectorLabels" (dict "root" . "component" "router") | nindent 6 }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "modelyard.componentSelectorLabels" (dict "root" . "component" "operator") | nindent 6 }}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.prometheus.podSelector | nindent 4 }}
{{- end }}

{{/* The router's limits store URL: the external one, or the Service of the store the chart deploys. */}}
{{- define "modelyard.router.storeURL" -}}
{{- if eq .Values.router.store.mode "external" -}}
{{- .Values.router.store.url -}}
{{- else -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "modelyard.componentName" (dict "root" . "component" "router-store")) .Release.Namespace -}}
{{- end -}}
{{- end -}}
