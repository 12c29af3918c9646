{{/* Names are truncated to 63 characters: the DNS label limit that Services and labels share. */}}
{{- define "kvroute.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvroute.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kvroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kvroute.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvroute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvroute.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvroute.adminSecretName" -}}
{{- default (printf "%s-admin" (include "kvroute.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{/* EndpointSlices always carry kubernetes.io/service-name; selecting on it needs no label copying. */}}
{{- define "kvroute.labelSelector" -}}
{{- default (printf "kubernetes.io/service-name=%s" .Values.discovery.kubernetes.serviceName) .Values.discovery.kubernetes.labelSelector }}
{{- end }}

{{- define "kvroute.dnsName" -}}
{{- default (printf "%s.%s.svc.cluster.local" .Values.discovery.kubernetes.serviceName .Release.Namespace) .Values.discovery.dns.name }}
{{- end }}

{{/* preStop sleep + drain + 5 s for the process to exit; past this the kubelet sends SIGKILL. */}}
{{- define "kvroute.terminationGracePeriod" -}}
{{- add (int .Values.preStopSleepSeconds) (int (ceil .Values.gracePeriod)) 5 }}
{{- end }}

{{- define "kvroute.apiKeysSecretName" -}}
{{- printf "%s-api-keys" (include "kvroute.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* key=tier,key=tier in key order: the KVROUTE_API_KEY_TIERS format. */}}
{{- define "kvroute.apiKeyTiers" -}}
{{- $pairs := list }}
{{- range $key, $tier := .Values.apiKeyTiers }}
{{- $pairs = append $pairs (printf "%s=%s" $key $tier) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Where the gateway finds the served model's tokenizer files: <mountPath>/<model>. */}}
{{- define "kvroute.tokenizerDir" -}}
{{- printf "%s/%s" (.Values.tokenizer.mountPath | trimSuffix "/") .Values.tokenizer.model }}
{{- end }}
