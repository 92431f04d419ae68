{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "expnet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "expnet.fullname" -}}
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

{{- define "expnet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "expnet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "expnet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "expnet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{- define "expnet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default "cpu" .Values.image.tag) -}}
{{- end -}}

{{/* Secret holding the SASL password: an existing one or the chart's. */}}
{{- define "expnet.saslSecretName" -}}
{{- default (printf "%s-kafka" (include "expnet.fullname" .)) .Values.kafka.sasl.existingSecret -}}
{{- end -}}

{{- define "expnet.saslSecretKey" -}}
{{- if .Values.kafka.sasl.existingSecret -}}{{ .Values.kafka.sasl.existingSecretKey }}{{- else -}}sasl-password{{- end -}}
{{- end -}}

{{- define "expnet.engineClaim" -}}
{{- default (printf "%s-engines" (include "expnet.fullname" .)) .Values.engine.persistence.existingClaim -}}
{{- end -}}

{{/* KEDA's names for the SASL mechanism. */}}
{{- define "expnet.kedaSasl" -}}
{{- $m := .Values.kafka.sasl.mechanism -}}
{{- if eq $m "PLAIN" -}}plaintext{{- else if eq $m "SCRAM-SHA-256" -}}scram_sha256{{- else if eq $m "SCRAM-SHA-512" -}}scram_sha512{{- else -}}none{{- end -}}
{{- end -}}

{{- define "expnet.tlsEnabled" -}}
{{- if or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/* Kafka connection environment shared by workers and the engine-build Job. */}}
{{- define "expnet.kafkaEnv" -}}
- name: EXPNET_KAFKA__BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: EXPNET_KAFKA__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.sasl.mechanism }}
- name: EXPNET_KAFKA__SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: EXPNET_KAFKA__SASL_USERNAME
  value: {{ required "kafka.sasl.username is required with kafka.sasl.mechanism" .Values.kafka.sasl.username | quote }}
- name: EXPNET_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "expnet.saslSecretName" . }}
      key: {{ include "expnet.saslSecretKey" . }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: EXPNET_KAFKA__SSL_CAFILE
  value: /etc/expnet/tls/ca.crt
{{- end }}
{{- if .Values.kafka.tls.clientSecret }}
{{- if not (include "expnet.tlsEnabled" .) }}
{{- fail "kafka.tls.clientSecret (mutual TLS) needs kafka.securityProtocol SSL or SASL_SSL" }}
{{- end }}
- name: EXPNET_KAFKA__SSL_CERTFILE
  value: /etc/expnet/client-tls/tls.crt
- name: EXPNET_KAFKA__SSL_KEYFILE
  value: /etc/expnet/client-tls/tls.key
{{- end }}
{{- end -}}
