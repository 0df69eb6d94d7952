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

{{/*
Labels of the helm test pod: a name of its own, so neither the Service nor
the PodDisruptionBudget selects it.
*/}}
{{- define "herald.testLabels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ printf "%s-test" (include "herald.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | replace "+" "_" | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
app.kubernetes.io/component: helm-test
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

{{/* The Secret holding HERALD_BROKER__URL (broker.kind=redis). */}}
{{- define "herald.brokerSecretName" -}}
{{- default (printf "%s-broker" (include "herald.fullname" .)) .Values.broker.existingSecret }}
{{- end }}

{{/*
The container image reference; a digest wins over the tag. No public image
exists, so the repository is required.
*/}}
{{- define "herald.image" -}}
{{- $repository := required "image.repository is required: set image.repository to the image you built and pushed; see README 'Container image'" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The helm test pod's image reference. */}}
{{- define "herald.testImage" -}}
{{- with .Values.tests.image }}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Deployment strategy: never two in-memory hubs side by side. */}}
{{- define "herald.strategy" -}}
{{- if eq .Values.broker.kind "redis" }}
type: RollingUpdate
rollingUpdate:
  {{- toYaml .Values.rollingUpdate | nindent 2 }}
{{- else }}
type: Recreate
{{- end }}
{{- end }}

{{/*
The label matchers that select this release's scrape targets, as the
ServiceMonitor labels them: `job` from the Service's app.kubernetes.io/name
label (jobLabel), `namespace` and `service` from the Service itself. The
PrometheusRule puts them in place of the alert file's job=~".*herald.*", so
the rules follow nameOverride and never match another release.
*/}}
{{- define "herald.alertSelector" -}}
{{- printf "job=%q, namespace=%q, service=%q" (include "herald.name" .) (include "herald.namespace" .) (include "herald.fullname" .) }}
{{- end }}

{{/* The effective trusted proxies: config.limits.trusted_proxies, then trustedProxies. */}}
{{- define "herald.trustedProxies" -}}
{{- $list := list }}
{{- with .Values.config.limits }}{{ with .trusted_proxies }}{{ $list = concat $list . }}{{ end }}{{ end }}
{{- $list = concat $list .Values.trustedProxies | uniq }}
{{- toJson $list }}
{{- end }}

{{/* Whether Herald checks tokens (config.auth.enabled; Herald's default is off). */}}
{{- define "herald.authEnabled" -}}
{{- $enabled := false }}
{{- with .Values.config.auth }}{{ if .enabled }}{{ $enabled = true }}{{ end }}{{ end }}
{{- ternary "true" "" $enabled }}
{{- end }}

{{/* The first HS algorithm in config.auth.algorithms, or "" (Herald's default is HS256). */}}
{{- define "herald.hsAlgorithm" -}}
{{- $algorithms := list "HS256" }}
{{- with .Values.config.auth }}{{ with .algorithms }}{{ $algorithms = . }}{{ end }}{{ end }}
{{- $found := "" }}
{{- range $algorithms }}
{{- if and (not $found) (hasPrefix "HS" .) }}{{ $found = . }}{{ end }}
{{- end }}
{{- $found }}
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

{{/*
Herald's TOML configuration, rendered from .Values.config, with
`broker.kind` and `trustedProxies` merged in. Secrets never enter it: the JWT
secret and the Redis URL reach the pod as environment variables from Secrets.
*/}}
{{- define "herald.configToml" -}}
{{- $config := deepCopy .Values.config }}
{{- if and $config.auth (or (hasKey $config.auth "hs_secret") (hasKey $config.auth "hs_secret_file")) }}
{{- fail "config.auth.hs_secret and hs_secret_file do not belong in a ConfigMap: set auth.jwtSecret or auth.existingSecret" }}
{{- end }}
{{- $broker := $config.broker | default dict }}
{{- if hasKey $broker "url" }}
{{- fail "config.broker.url does not belong in a ConfigMap (a Redis URL may carry a password): set broker.url or broker.existingSecret" }}
{{- end }}
{{- if hasKey $broker "kind" }}
{{- fail "set broker.kind, not config.broker.kind: the chart derives the strategy and the replica rule from it" }}
{{- end }}
{{- if or (eq .Values.broker.kind "redis") $broker }}
{{- $_ := set $broker "kind" .Values.broker.kind }}
{{- $_ := set $config "broker" $broker }}
{{- else }}
{{- $_ := unset $config "broker" }}
{{- end }}
{{- if .Values.trustedProxies }}
{{- $limits := $config.limits | default dict }}
{{- $_ := set $limits "trusted_proxies" (include "herald.trustedProxies" . | fromJsonArray) }}
{{- $_ := set $config "limits" $limits }}
{{- end }}
{{- include "herald.integerize" $config }}
{{- toToml $config }}
{{- end }}

{{/* Fails the render on values that cannot work together. */}}
{{- define "herald.validate" -}}
{{- $_ := include "herald.image" . }}
{{- if and (gt (int .Values.replicaCount) 1) (ne .Values.broker.kind "redis") }}
{{- fail "replicaCount must be 1 with the in-memory broker: it keeps all state in one process, so replicas would never see each other's events. Several replicas need broker.kind=redis." }}
{{- end }}
{{- if and (eq .Values.broker.kind "redis") (not .Values.broker.existingSecret) (not .Values.broker.url) }}
{{- fail "broker.kind=redis needs the Redis URL: set broker.existingSecret (a Secret holding it) or broker.url" }}
{{- end }}
{{- if or .Values.ingress.enabled .Values.httpRoute.enabled }}
{{- if not (include "herald.trustedProxies" . | fromJsonArray) }}
{{- fail "an Ingress or HTTPRoute needs trustedProxies: list the address ranges of the ingress controller or gateway pods (e.g. [\"10.0.0.0/8\"]). Without them Herald sees every client at the proxy's IP, so the per-IP limits cap the whole service at limits.max_streams_per_ip streams and throttle a rollout's reconnect wave to limits.streams_per_ip_per_second." }}
{{- end }}
{{- $telemetry := .Values.config.telemetry | default dict }}
{{- if and (ne (toString $telemetry.metrics_enabled) "false") (not $telemetry.admin_listen) }}
{{- fail "an Ingress or HTTPRoute routes the main port, which serves /metrics while config.telemetry.admin_listen is unset: keep admin_listen (default \"0.0.0.0:9090\") so /metrics stays off the public path, or set config.telemetry.metrics_enabled=false" }}
{{- end }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs: the Gateway(s) the route attaches to" }}
{{- end }}
{{- with .Values.podDisruptionBudget }}
{{- if and .enabled (not (kindIs "invalid" .minAvailable)) (ne (toString .minAvailable) "") (not (contains "%" (toString .minAvailable))) }}
{{- if ge (int .minAvailable) (int $.Values.replicaCount) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below replicaCount (%d), or no pod may ever be evicted and node drains hang" .minAvailable (int $.Values.replicaCount)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.tests.enabled (include "herald.authEnabled" .) (not .Values.tests.tokenSecret) (not (include "herald.hsAlgorithm" .)) }}
{{- fail "the helm test cannot mint a token without an HS algorithm in config.auth.algorithms: set tests.tokenSecret (a token with rights on helm-test/*) or tests.enabled=false" }}
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
