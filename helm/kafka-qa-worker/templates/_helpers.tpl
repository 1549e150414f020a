{{/*
Names. Object names are cut at 63 characters, the limit of a DNS label (and of label values).
*/}}
{{- define "kafka-qa-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka-qa-worker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kafka-qa-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-qa-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kafka-qa-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kafka-qa-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The kind of the workers' workload, which the autoscalers scale: see workload.yaml. */}}
{{- define "kafka-qa-worker.workloadKind" -}}
{{- ternary "StatefulSet" "Deployment" .Values.staticMembership.enabled -}}
{{- end -}}

{{- define "kafka-qa-worker.headlessServiceName" -}}
{{- printf "%s-headless" (include "kafka-qa-worker.fullname" .) -}}
{{- end -}}

{{- define "kafka-qa-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kafka-qa-worker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kafka-qa-worker.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
A setting's value as the worker parses it from its environment variable. Numbers from values
files arrive as float64, and Go prints large whole ones in exponent form (1e+06), which the
worker's int() would refuse, so whole numbers are printed as integers; float settings read
"30" as 30.0 just as well.
*/}}
{{- define "kafka-qa-worker.settingValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
The CPU limit rounded up, at least 1 (1 without a limit): the cores the worker gets. A limit is
a Kubernetes quantity: "2", 2, "1500m".
*/}}
{{- define "kafka-qa-worker.cores" -}}
{{- $cpu := dig "limits" "cpu" "" (.Values.resources | default dict) | toString -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (ceil (divf (trimSuffix "m" $cpu | float64) 1000)) | int -}}
{{- else -}}
{{- max 1 (ceil ($cpu | float64)) | int -}}
{{- end -}}
{{- end -}}

{{/*
QA_INFERENCE_STREAMS and QA_THREADS: what the worker's stream_layout picks for the CPU limit's
cores, for whichever of config.inferenceStreams and config.threads is null (by default one
single-threaded stream per core). Worked out here rather than left to the worker because without
a limit the worker would size itself for every core of the node.
*/}}
{{- define "kafka-qa-worker.streamLayout" -}}
{{- $cores := include "kafka-qa-worker.cores" . | int -}}
{{- $threads := .Values.config.threads -}}
{{- $streams := .Values.config.inferenceStreams -}}
{{- /* ternary would evaluate the division by a zero or null count too. */ -}}
{{- if kindIs "invalid" $streams -}}
{{- if and (not (kindIs "invalid" $threads)) (gt (int $threads) 0) -}}
{{- $streams = max 1 (div $cores (int $threads)) -}}
{{- else -}}
{{- $streams = $cores -}}
{{- end -}}
{{- end -}}
{{- if kindIs "invalid" $threads -}}
{{- if gt (int $streams) 0 -}}
{{- $threads = max 1 (div $cores (int $streams)) -}}
{{- else -}}
{{- $threads = 1 -}}
{{- end -}}
{{- end -}}
QA_INFERENCE_STREAMS: {{ include "kafka-qa-worker.settingValue" $streams | quote }}
QA_THREADS: {{ include "kafka-qa-worker.settingValue" $threads | quote }}
{{- end -}}

{{/*
Kubernetes may kill the pod this long after SIGTERM; the worker drains for up to drainTimeoutS
and then still has to commit and close its connections, hence the margin.
*/}}
{{- define "kafka-qa-worker.terminationGracePeriodSeconds" -}}
{{- $drain := .Values.config.drainTimeoutS | default 0 | float64 -}}
{{- add (ceil $drain | int) .Values.terminationGraceMarginSeconds -}}
{{- end -}}

{{/* The model folder the worker loads (QA_MODEL) and the volume it is on, per model.source. */}}
{{- define "kafka-qa-worker.modelMountPath" -}}/models{{- end -}}

{{- define "kafka-qa-worker.modelPath" -}}
{{- if eq .Values.model.source "pvc" -}}
{{- printf "%s/%s" (include "kafka-qa-worker.modelMountPath" .) (.Values.model.pvc.subPath | trimPrefix "/") | trimSuffix "/" -}}
{{- else if eq .Values.model.source "export" -}}
{{- printf "%s/model" (include "kafka-qa-worker.modelMountPath" .) -}}
{{- else -}}
{{- .Values.model.path -}}
{{- end -}}
{{- end -}}

{{/* SASL and TLS as the worker's security protocol implies them. */}}
{{- define "kafka-qa-worker.saslEnabled" -}}
{{- if contains "SASL" .Values.config.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "kafka-qa-worker.tlsEnabled" -}}
{{- if contains "SSL" .Values.config.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "kafka-qa-worker.saslSecretName" -}}
{{- if .Values.kafka.sasl.existingSecret -}}
{{- .Values.kafka.sasl.existingSecret -}}
{{- else -}}
{{- printf "%s-sasl" (include "kafka-qa-worker.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The PromQL label matchers of this release's series: the job label is the metrics Service's name
(the Prometheus Operator's default for ServiceMonitor targets).
*/}}
{{- define "kafka-qa-worker.promSelector" -}}
{{- printf "job=%q, namespace=%q" (include "kafka-qa-worker.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* The ConfigMap with the question-sets file; empty when tagging has none. */}}
{{- define "kafka-qa-worker.questionSetsConfigMap" -}}
{{- if .Values.tagging.existingConfigMap -}}
{{- .Values.tagging.existingConfigMap -}}
{{- else if .Values.tagging.questionSets -}}
{{- printf "%s-question-sets" (include "kafka-qa-worker.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The topics the worker consumes as a group: the questions topic and the documents topics. */}}
{{- define "kafka-qa-worker.inputTopics" -}}
{{- $topics := list .Values.config.questionsTopic -}}
{{- range $item := splitList "," (.Values.config.documentsTopics | default "") -}}
{{- $topic := splitList "=" $item | first | trim -}}
{{- if and $topic (not (has $topic $topics)) -}}
{{- $topics = append $topics $topic -}}
{{- end -}}
{{- end -}}
{{- toJson $topics -}}
{{- end -}}
