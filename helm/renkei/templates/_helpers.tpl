{{/* Names ------------------------------------------------------------------ */}}
{{- define "renkei.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "renkei.fullname" -}}
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

{{/* "<fullname>-<component>", for every object of one component */}}
{{- define "renkei.component" -}}
{{- printf "%s-%s" (include "renkei.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "renkei.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "renkei.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: renkei
{{- end -}}

{{- define "renkei.selectorLabels" -}}
app.kubernetes.io/name: {{ include "renkei.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "renkei.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "renkei.serviceAccountName" -}}
{{- default (include "renkei.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Store ------------------------------------------------------------------ */}}
{{- define "renkei.sqlite" -}}
{{- if eq .Values.store.type "sqlite" -}}true{{- else if eq .Values.store.type "mongodb" -}}{{- else -}}
{{- fail (printf "store.type must be sqlite or mongodb (got %q)" .Values.store.type) -}}
{{- end -}}
{{- end -}}

{{- define "renkei.sqlitePath" -}}/data/renkei.db{{- end -}}

{{- define "renkei.mongodbName" -}}
{{- default (printf "%s-mongodb" (include "renkei.fullname" .)) .Values.store.mongodb.operator.name -}}
{{- end -}}

{{/* The broker's RENKEI_STORE, and the variables it is built from: never a secret in a literal */}}
{{- define "renkei.storeEnv" -}}
{{- if include "renkei.sqlite" . }}
- name: RENKEI_STORE
  value: {{ printf "sqlite:///%s?synchronous=%s" (include "renkei.sqlitePath" .) .Values.store.sqlite.synchronous | quote }}
{{- else if eq .Values.store.mongodb.mode "external" }}
- name: RENKEI_STORE
  valueFrom:
    secretKeyRef:
      name: {{ required "store.mongodb.external.existingSecret: the Secret holding the MongoDB URI" .Values.store.mongodb.external.existingSecret }}
      key: {{ .Values.store.mongodb.external.uriKey }}
{{- else if eq .Values.store.mongodb.mode "operator" }}
{{- $name := include "renkei.mongodbName" . }}
{{- $op := .Values.store.mongodb.operator }}
- name: RENKEI_MONGO_USER
  value: {{ $op.user | quote }}
- name: RENKEI_MONGO_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "store.mongodb.operator.passwordSecret: the Secret holding the MongoDB user's password" $op.passwordSecret }}
      key: {{ $op.passwordKey }}
{{- $hosts := list }}
{{- range $i, $_ := until (int $op.members) }}
{{- $hosts = append $hosts (printf "%s-%d.%s-svc.%s.svc.%s:27017" $name $i $name $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
- name: RENKEI_STORE
  value: {{ printf "mongodb://$(RENKEI_MONGO_USER):$(RENKEI_MONGO_PASSWORD)@%s/%s?replicaSet=%s&authSource=admin" (join "," $hosts) $op.database $name | quote }}
{{- else }}
{{- fail (printf "store.mongodb.mode must be external or operator (got %q)" .Values.store.mongodb.mode) }}
{{- end }}
{{- end -}}

{{/* Security --------------------------------------------------------------- */}}
{{- define "renkei.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "renkei.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every Renkei container shares */}}
{{- define "renkei.commonEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end -}}

{{- define "renkei.brokerUrl" -}}
{{- printf "http://%s:%d" (include "renkei.component" (dict "root" . "name" "broker")) (int .Values.broker.service.port) -}}
{{- end -}}

{{/* The agent's RENKEI_MQTT_URL: host from values, login from a Secret */}}
{{- define "renkei.mqttEnv" -}}
{{- $m := .Values.mqtt }}
{{- $scheme := "mqtt" }}
{{- $host := "" }}
{{- $port := 1883 }}
{{- if $m.mosquitto.enabled }}
{{- $host = include "renkei.component" (dict "root" . "name" "mosquitto") }}
{{- else }}
{{- $host = required "mqtt.external.host: the MQTT broker the agent connects to (or enable mqtt.mosquitto)" $m.external.host }}
{{- $port = int $m.external.port }}
{{- if $m.external.tls }}{{ $scheme = "mqtts" }}{{ end }}
{{- end }}
{{- if $m.credentials.enabled }}
{{- $secret := default (include "renkei.component" (dict "root" . "name" "mqtt")) $m.credentials.existingSecret }}
- name: RENKEI_MQTT_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $m.credentials.usernameKey }}
- name: RENKEI_MQTT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $m.credentials.passwordKey }}
- name: RENKEI_MQTT_URL
  value: {{ printf "%s://$(RENKEI_MQTT_USERNAME):$(RENKEI_MQTT_PASSWORD)@%s:%d" $scheme $host $port | quote }}
{{- else }}
- name: RENKEI_MQTT_URL
  value: {{ printf "%s://%s:%d" $scheme $host $port | quote }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress rules ---------------------------------------------- */}}
{{- define "renkei.egressDns" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Out of the cluster: anywhere on the given ports (unless LGWAN), and allowedCIDRs */}}
{{- define "renkei.egressOut" -}}
{{- $np := .root.Values.networkPolicy }}
{{- if $np.egress.allowExternal }}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
    - ipBlock:
        cidr: ::/0
  ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- range $np.egress.allowedCIDRs }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
  {{- with .ports }}
  ports:
    {{- range . }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Access control ----------------------------------------------------------- */}}
{{/* "true" when the chart makes the auth file itself: no file of the operator's
     (auth.enabled) and the broker not asked to run open (broker.insecureNoAuth) */}}
{{- define "renkei.generatedAuth" -}}
{{- if and (not .Values.auth.enabled) (not .Values.broker.insecureNoAuth) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the broker and the agent get an auth file (the operator's or the chart's) */}}
{{- define "renkei.authFile" -}}
{{- if or .Values.auth.enabled (include "renkei.generatedAuth" .) -}}true{{- end -}}
{{- end -}}

{{- define "renkei.generatedAuthName" -}}
{{- include "renkei.component" (dict "root" . "name" "generated-auth") -}}
{{- end -}}

{{/* Key of the generated Secret holding the admin API key itself (not the file) */}}
{{- define "renkei.generatedAuthKeyName" -}}admin-api-key{{- end -}}

{{/* Key of the auth file in its Secret, and where the pods read it */}}
{{- define "renkei.authFileKey" -}}
{{- if .Values.auth.enabled -}}{{ .Values.auth.key }}{{- else -}}auth.yaml{{- end -}}
{{- end -}}

{{- define "renkei.authFilePath" -}}
{{- printf "/etc/renkei/auth/%s" (include "renkei.authFileKey" .) -}}
{{- end -}}

{{/* The Secret volume of the auth file: only the file, never the plain key beside it */}}
{{- define "renkei.authVolume" -}}
- name: auth
  secret:
    {{- if .Values.auth.enabled }}
    secretName: {{ required "auth.existingSecret: the Secret holding the access-control file" .Values.auth.existingSecret }}
    {{- else }}
    secretName: {{ include "renkei.generatedAuthName" . }}
    {{- end }}
    defaultMode: 0440
    items:
      - key: {{ include "renkei.authFileKey" . }}
        path: {{ include "renkei.authFileKey" . }}
{{- end -}}
