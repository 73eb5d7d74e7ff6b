{{/* Names and labels shared by every template. */}}

{{- define "opo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name.
Truncated to 52 so that suffixes ("-webhook-tls", "-redis") keep names within 63 characters. */}}
{{- define "opo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "opo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "opo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "opo.labels" -}}
helm.sh/chart: {{ include "opo.chart" . }}
{{ include "opo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openai-policy-operator
{{- end -}}

{{- define "opo.operatorSelectorLabels" -}}
{{ include "opo.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "opo.redisSelectorLabels" -}}
{{ include "opo.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "opo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "opo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "opo.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "opo.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) -}}
{{- end -}}

{{- define "opo.webhookServiceName" -}}
{{- printf "%s-webhook" (include "opo.fullname" .) -}}
{{- end -}}

{{- define "opo.webhookCertSecret" -}}
{{- printf "%s-webhook-tls" (include "opo.fullname" .) -}}
{{- end -}}

{{- define "opo.webhookConfigurationName" -}}
{{- include "opo.fullname" . -}}
{{- end -}}

{{- define "opo.redisName" -}}
{{- printf "%s-redis" (include "opo.fullname" .) -}}
{{- end -}}

{{/* The Redis URL handed to the operator (and through it to every sidecar). */}}
{{- define "opo.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else -}}
{{- printf "redis://%s.%s.svc:%d/0" (include "opo.redisName" .) .Release.Namespace (int .Values.redis.port) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the webhook never sees: kube-system, the release namespace, and any extra. */}}
{{- define "opo.excludedNamespaces" -}}
{{- $all := concat (list "kube-system" .Release.Namespace) .Values.webhook.excludedNamespaces | uniq | sortAlpha -}}
{{- toJson $all -}}
{{- end -}}

{{/* The hardened container security context shared by the operator and Redis. */}}
{{- define "opo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* How pods are validated: "policy" (ValidatingAdmissionPolicy, Kubernetes >= 1.30) or "webhook". */}}
{{- define "opo.admissionValidation" -}}
{{- if eq .Values.admission.validation "auto" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}policy{{- else -}}webhook{{- end -}}
{{- else -}}
{{- .Values.admission.validation -}}
{{- end -}}
{{- end -}}

{{- define "opo.signingSecret" -}}
{{- .Values.signing.existingSecret | default (printf "%s-signing" (include "opo.fullname" .)) -}}
{{- end -}}

{{- /*
The policy-signing material as JSON {"signing.key", "policy-keys"} (Secret data, base64). Generated
once per render and memoised in .Values, because two templates need the same random key: the
Secret, and the admission policies that pin the sidecars' --policy-keys. Kept across upgrades by
lookup (as the webhook CA). Helm cannot compute an Ed25519 public key, so the sidecars are given
a self-signed certificate for the generated key, which carries it.
*/ -}}
{{- define "opo.signing" -}}
{{- if not (hasKey .Values "__opoSigning") -}}
{{- $data := dict -}}
{{- if .Values.signing.existingSecret -}}
{{- $data = dict "policy-keys" (required "signing.policyKeys is required with signing.existingSecret" .Values.signing.policyKeys | b64enc) -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "opo.signingSecret" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "signing.key") (hasKey $existing.data "policy-keys") -}}
{{- $data = dict "signing.key" (index $existing.data "signing.key") "policy-keys" (index $existing.data "policy-keys") -}}
{{- else -}}
{{- $key := genPrivateKey "ed25519" -}}
{{- $cert := genSelfSignedCertWithKey (printf "%s-policy-signing" (include "opo.fullname" .)) nil nil 36500 $key -}}
{{- $data = dict "signing.key" ($key | b64enc) "policy-keys" ($cert.Cert | b64enc | b64enc) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__opoSigning" $data -}}
{{- end -}}
{{- toJson (get .Values "__opoSigning") -}}
{{- end -}}

{{- define "opo.policyKeys" -}}
{{- index (include "opo.signing" . | fromJson) "policy-keys" | b64dec -}}
{{- end -}}
