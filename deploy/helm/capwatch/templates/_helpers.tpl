{{/*
Names, labels and the pieces both daemons' pods share. Each fact is decided here once:
the templates call these.
*/}}

{{/* The chart's name (nameOverride). */}}
{{- define "capwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: the release name when it holds the chart's name
("capwatch" -> capwatch-agent), else <release>-<chart>; fullnameOverride wins. */}}
{{- define "capwatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "capwatch.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "capwatch.agent.name" -}}
{{- include "capwatch.fullname" . }}-agent
{{- end -}}

{{- define "capwatch.collector.name" -}}
{{- include "capwatch.fullname" . }}-collector
{{- end -}}

{{/* Selector labels of a component ("agent", "collector"): immutable in a DaemonSet's and a
StatefulSet's selector, so nothing that changes with a release's version. */}}
{{- define "capwatch.selectorLabels" -}}
app.kubernetes.io/name: capwatch-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Every object's labels (Kubernetes' recommended ones). Call with (dict "root" $
"component" "agent"); component "" for objects both daemons use. */}}
{{- define "capwatch.labels" -}}
{{- if .component -}}
{{ include "capwatch.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- else -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}
app.kubernetes.io/part-of: capwatch
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* A pod template's labels: the selector's and part-of (no version: a chart upgrade that
changes nothing in the pod does not restart it). */}}
{{- define "capwatch.podLabels" -}}
{{ include "capwatch.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: capwatch
{{- end -}}

{{/* A component's image: the agent's is <repository>:<tag>, the collector's
<repository>:<tag>-collector (deploy/kubernetes/Dockerfile's two targets). */}}
{{- define "capwatch.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- if eq .component "collector" -}}
{{- printf "%s:%s-collector" .root.Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .root.Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Secrets and ConfigMaps: the existing one named in the values, else the chart's own. */}}
{{- define "capwatch.agent.mqttSecret" -}}
{{- .Values.agent.mqtt.existingSecret | default (printf "%s-mqtt" (include "capwatch.agent.name" .)) -}}
{{- end -}}

{{- define "capwatch.collector.mqttSecret" -}}
{{- .Values.collector.mqtt.existingSecret | default (printf "%s-mqtt" (include "capwatch.collector.name" .)) -}}
{{- end -}}

{{- define "capwatch.collector.storeSecret" -}}
{{- .Values.collector.store.postgresql.existingSecret | default (printf "%s-store" (include "capwatch.collector.name" .)) -}}
{{- end -}}

{{- define "capwatch.mqttCaConfigMap" -}}
{{- .Values.mqtt.tls.caConfigMap | default (ternary (printf "%s-mqtt-ca" (include "capwatch.fullname" .)) "" (ne .Values.mqtt.tls.caCert "")) -}}
{{- end -}}

{{/* The broker's address and TLS, as both daemons' settings read them (mqtt.host, port,
tls, tls_ca_file). */}}
{{- define "capwatch.mqttEnv" -}}
- name: CAPWATCH_MQTT__HOST
  value: {{ .Values.mqtt.host | quote }}
- name: CAPWATCH_MQTT__PORT
  value: {{ .Values.mqtt.port | quote }}
{{- if .Values.mqtt.tls.enabled }}
- name: CAPWATCH_MQTT__TLS
  value: "true"
{{- if include "capwatch.mqttCaConfigMap" . }}
- name: CAPWATCH_MQTT__TLS_CA_FILE
  value: /etc/capwatch/mqtt-ca/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{- define "capwatch.mqttCaMount" -}}
{{- if and .Values.mqtt.tls.enabled (include "capwatch.mqttCaConfigMap" .) }}
- name: mqtt-ca
  mountPath: /etc/capwatch/mqtt-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "capwatch.mqttCaVolume" -}}
{{- if and .Values.mqtt.tls.enabled (include "capwatch.mqttCaConfigMap" .) }}
- name: mqtt-ca
  configMap:
    name: {{ include "capwatch.mqttCaConfigMap" . }}
{{- end }}
{{- end -}}

{{/* The web config of a daemon's HTTP server (its --web-config-file): env, mount, volume.
Call with (dict "root" $ "web" .Values.agent.webConfig). */}}
{{- define "capwatch.webEnv" -}}
{{- if .web.secretName }}
# TLS and basic auth for the paths below: exporter-toolkit's web config, from a Secret.
- name: CAPWATCH_WEB_CONFIG_FILE
  value: /etc/capwatch/web/web.yml
{{- end }}
{{- end -}}

{{- define "capwatch.webMount" -}}
{{- if .web.secretName }}
- name: web-config
  mountPath: /etc/capwatch/web
  readOnly: true
{{- end }}
{{- end -}}

{{- define "capwatch.webVolume" -}}
{{- if .web.secretName }}
- name: web-config
  secret:
    secretName: {{ .web.secretName }}
    # Its private key: the daemon's group (the pod's fsGroup) reads it, nobody else.
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* One probe's target: GET path on the metrics port, over HTTPS when the web config has
TLS; only a TCP connection when it asks for credentials that a kubelet probe cannot send.
Call with (dict "web" .Values.agent.webConfig "path" "/healthz"). */}}
{{- define "capwatch.probeTarget" -}}
{{- if and .web.secretName .web.auth -}}
tcpSocket:
  port: metrics
{{- else -}}
httpGet:
  path: {{ .path }}
  port: metrics
{{- if and .web.secretName .web.tls }}
  scheme: HTTPS
{{- end }}
{{- end -}}
{{- end -}}

{{/* The daemons' container security context: non-root (the pod's user), read-only root, no
capabilities, no escalation. */}}
{{- define "capwatch.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "capwatch.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The ConfigMap holding collector.toml ("": none). */}}
{{- define "capwatch.collector.configMap" -}}
{{- $c := .Values.collector.config }}
{{- if $c.existingConfigMap }}{{ $c.existingConfigMap }}
{{- else if $c.toml }}{{ include "capwatch.collector.name" . }}-config
{{- end }}
{{- end }}

{{/* The ConfigMap holding the database server's CA ("": none, or SQLite). */}}
{{- define "capwatch.collector.storeCaConfigMap" -}}
{{- $pg := .Values.collector.store.postgresql }}
{{- if eq .Values.collector.store.kind "postgresql" }}
{{- $pg.caConfigMap | default (ternary (printf "%s-store-ca" (include "capwatch.collector.name" .)) "" (ne $pg.caCert "")) -}}
{{- end }}
{{- end -}}

{{/* A ConfigMap holding a CA certificate (PEM) under ca.crt: the broker's or the database
server's. Call with (dict "ctx" <labels context> "name" <its name> "pem" <the PEM>). */}}
{{- define "capwatch.caConfigMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.root.Release.Namespace }}
  labels:
    {{- include "capwatch.labels" .ctx | nindent 4 }}
data:
  ca.crt: |
    {{- .pem | trim | nindent 4 }}
{{- end -}}
