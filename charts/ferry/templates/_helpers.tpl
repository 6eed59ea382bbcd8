{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ferry.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name appended unless it already contains it. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end }}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferry.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ferry.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* "true" when leader election is on: forced by leaderElection.enabled, else replicaCount > 1. */}}
{{- define "ferry.leaderElection" -}}
{{- if kindIs "bool" .Values.leaderElection.enabled }}
{{- .Values.leaderElection.enabled }}
{{- else }}
{{- gt (int .Values.replicaCount) 1 }}
{{- end }}
{{- end }}

{{/* The namespaces where the operator may write KafkaTopics, as a JSON list:
strimzi.kafkaNamespaces, else the watched namespace in single-namespace mode. */}}
{{- define "ferry.topicNamespaces" -}}
{{- if .Values.strimzi.kafkaNamespaces }}
{{- .Values.strimzi.kafkaNamespaces | uniq | toJson }}
{{- else if .Values.watchNamespace }}
{{- list .Values.watchNamespace | toJson }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/* Cross-field checks that values.schema.json cannot phrase clearly. */}}
{{- define "ferry.validate" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- if and .Values.strimzi.manageTopics (not .Values.strimzi.enabled) }}
{{- fail "strimzi.manageTopics needs strimzi.enabled: topics are Strimzi KafkaTopic resources" }}
{{- end }}
{{- if and .Values.strimzi.manageTopics (not .Values.strimzi.kafkaNamespaces) (not .Values.watchNamespace) }}
{{- fail "strimzi.manageTopics needs strimzi.kafkaNamespaces: the namespaces of your Strimzi Kafka clusters, where the operator may write KafkaTopics (a Role in each, never cluster-wide)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (eq (include "ferry.leaderElection" .) "false") }}
{{- fail "replicaCount > 1 with leaderElection.enabled=false would run several active operators: leave leaderElection.enabled null or true" }}
{{- end }}
{{- end }}
