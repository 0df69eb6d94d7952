{{/*
Names, labels and the rendered configuration. Every template takes its names
and labels from here, so selectors and label sets cannot drift apart.
*/}}

{{/* The chart name, truncated to a DNS label. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources. A release name that already
contains the chart name is used as is.
*/}}
{{- define "herald.fullname" -}}
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

{{/* The namespace of every namespaced resource. */}}
{{- define "herald.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name and instance only. They are immutable on a Deployment,
so nothing that changes between releases (version, chart) may enter them.
*/}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | replace "+" "_" | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding HERALD_JWT_SECRET. */}}
{{- define "herald.secretName" -}}
{{- default (include "herald.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* The container image reference; a digest wins over the tag. */}}
{{- define "herald.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The port number at the end of a listen address ("0.0.0.0:8000", "[::]:8000"). */}}
{{- define "herald.portOf" -}}
{{- $port := regexFind "[0-9]+$" (toString .) }}
{{- if not $port }}
{{- fail (printf "cannot find a port in listen address %q" (toString .)) }}
{{- end }}
{{- $port }}
{{- end }}

{{/* The container port of the main listener, from config.listen. */}}
{{- define "herald.httpPort" -}}
{{- include "herald.portOf" (required "config.listen is required" .Values.config.listen) }}
{{- end }}

{{/* The container port of the admin listener, or "" when there is none. */}}
{{- define "herald.adminPort" -}}
{{- with .Values.config.telemetry }}
{{- if .admin_listen }}
{{- include "herald.portOf" .admin_listen }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Whole-number floats to integers, in place, through nested maps. Helm reads
every YAML number as a float, and `toToml` would write `ring_size = 1024.0`,
which Herald's integer keys refuse.
*/}}
{{- define "herald.integerize" -}}
{{- $map := . }}
{{- range $key, $value := $map }}
{{- if kindIs "map" $value }}
{{- include "herald.integerize" $value }}
{{- else if kindIs "float64" $value }}
{{- if eq $value (float64 (int64 $value)) }}
{{- $_ := set $map $key (int64 $value) }}
{{- end }}
{{- else if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}
{{- $items = append $items (int64 .) }}
{{- else }}
{{- $items = append $items . }}
{{- end }}
{{- end }}
{{- $_ := set $map $key $items }}
{{- end }}
{{- end }}
{{- end }}

{{/* Herald's TOML configuration, rendered from .Values.config. */}}
{{- define "herald.configToml" -}}
{{- $config := deepCopy .Values.config }}
{{- if and (hasKey $config "auth") (or (hasKey $config.auth "hs_secret") (hasKey $config.auth "hs_secret_file")) }}
{{- fail "config.auth.hs_secret and hs_secret_file do not belong in a ConfigMap: set auth.jwtSecret or auth.existingSecret" }}
{{- end }}
{{- include "herald.integerize" $config }}
{{- toToml $config }}
{{- end }}

{{/* Fails the render on values that cannot work together. */}}
{{- define "herald.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount must be 1: the in-memory broker keeps all state in one process, so replicas would never see each other's events. Several replicas need the Redis broker." }}
{{- end }}
{{- $grace := 10 }}
{{- with .Values.config.shutdown }}{{ with .grace_secs }}{{ $grace = int . }}{{ end }}{{ end }}
{{- $needed := add (int .Values.preStopSleepSeconds) $grace }}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.shutdown.grace_secs (%d), or Herald is killed mid-drain" (int .Values.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- if and .Values.auth.jwtSecret (lt (len .Values.auth.jwtSecret) 32) }}
{{- fail "auth.jwtSecret must be at least 32 bytes (Herald refuses shorter HMAC secrets in production)" }}
{{- end }}
{{- end }}
