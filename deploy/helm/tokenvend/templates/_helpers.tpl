{{/* The objects' name: the release's, with the chart's name unless it holds it. */}}
{{- define "tokenvend.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* What selects the pods: stable across upgrades. */}}
{{- define "tokenvend.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenvend.labels" -}}
{{ include "tokenvend.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tokenvend.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{ $i.repository }}@{{ $i.digest }}
{{- else -}}
{{ $i.repository }}:{{ $i.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Where the TLS Secret is mounted (not under the config's mount: nested mounts
in a read-only ConfigMap volume fail). */}}
{{- define "tokenvend.tlsDir" -}}/var/run/secrets/tokenvend-tls{{- end -}}
{{- define "tokenvend.secretsDir" -}}/var/run/secrets/tokenvend{{- end -}}

{{/* A Kubernetes memory quantity (256Mi, 1Gi, 500M, 268435456) in bytes. */}}
{{- define "tokenvend.bytes" -}}
{{- $q := toString . -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $num := $q -}}
{{- $mult := 1 -}}
{{- range $suffix := list "Ki" "Mi" "Gi" "Ti" "k" "M" "G" "T" -}}
{{- if and (eq $num $q) (hasSuffix $suffix $q) -}}
{{- $num = trimSuffix $suffix $q -}}
{{- $mult = get $units $suffix -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[0-9]+$" $num) -}}
{{- fail (printf "resources.limits.memory %q: want a whole number with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T)" $q) -}}
{{- end -}}
{{- mul (atoi $num) $mult -}}
{{- end -}}

{{/* GOMEMLIMIT: goMemLimitPercent of resources.limits.memory, in MiB. */}}
{{- define "tokenvend.goMemLimit" -}}
{{- $limit := dig "limits" "memory" "" .Values.resources -}}
{{- if not $limit -}}
{{- fail "resources.limits.memory is required: GOMEMLIMIT is set from it" -}}
{{- end -}}
{{- $bytes := include "tokenvend.bytes" $limit | atoi -}}
{{- $mib := div (div (mul $bytes .Values.goMemLimitPercent) 100) 1048576 -}}
{{- if lt $mib 32 -}}
{{- fail (printf "GOMEMLIMIT %dMiB from resources.limits.memory %s: want at least 32MiB" $mib $limit) -}}
{{- end -}}
{{- printf "%dMiB" $mib -}}
{{- end -}}

{{/* tokenvend's config.yaml. */}}
{{- define "tokenvend.config" -}}
{{- $v := .Values -}}
{{- $server := dict "grpc_addr" "0.0.0.0:9090" "http_addr" "0.0.0.0:8080" "shutdown_timeout" $v.shutdownTimeout -}}
{{- if eq $v.transport "tls" -}}
{{- $dir := include "tokenvend.tlsDir" . -}}
{{- $tls := dict "cert" (printf "%s/tls.crt" $dir) "key" (printf "%s/tls.key" $dir) -}}
{{- if $v.tls.clientCA -}}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- $_ := set $server "tls" $tls -}}
{{- else if eq $v.transport "mesh" -}}
{{- $_ := set $server "tls_terminated_by_mesh" true -}}
{{- else -}}
{{- fail (printf "transport %q: want tls or mesh (credentials never cross the network in the clear)" $v.transport) -}}
{{- end -}}
{{- $cfg := dict "server" $server "providers" $v.providers "callers" $v.callers -}}
{{- with $v.cache }}{{ $_ := set $cfg "cache" . }}{{ end -}}
{{- with $v.store }}{{ $_ := set $cfg "store" . }}{{ end -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy $v.config)) -}}
{{- end -}}
