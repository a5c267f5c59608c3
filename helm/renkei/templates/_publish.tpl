{{/* The pod of `renkei publish`, as a Deployment or a CronJob runs it */}}
{{- define "renkei.publishPod" -}}
{{- $p := .Values.publish }}
serviceAccountName: {{ include "renkei.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "renkei.podSecurityContext" . | nindent 2 }}
containers:
  - name: publish
    image: {{ include "renkei.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - publish
      - --definitions
      - /etc/renkei/publish
      {{- if eq $p.mode "deployment" }}
      - --every
      - {{ $p.every | quote }}
      {{- end }}
    env:
      {{- include "renkei.commonEnv" . | nindent 6 }}
      - name: RENKEI_CKAN_URL
        value: {{ required "publish.ckanUrl: the CKAN site to publish to" $p.ckanUrl | quote }}
      - name: RENKEI_CKAN_TOKEN_FILE
        value: /etc/renkei/ckan/token
      - name: RENKEI_BROKER_URL
        value: {{ include "renkei.brokerUrl" . | quote }}
    resources:
      {{- toYaml $p.resources | nindent 6 }}
    securityContext:
      {{- include "renkei.containerSecurityContext" . | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: definitions
        mountPath: /etc/renkei/publish
        readOnly: true
      - name: ckan-token
        mountPath: /etc/renkei/ckan
        readOnly: true
volumes:
  - name: tmp
    emptyDir: {}
  - name: definitions
    configMap:
      name: {{ default (include "renkei.component" (dict "root" . "name" "publish")) $p.existingConfigMap }}
  - name: ckan-token
    secret:
      secretName: {{ required "publish.ckanTokenSecret.name: the Secret holding the CKAN API token" $p.ckanTokenSecret.name }}
      defaultMode: 0440
      items:
        - key: {{ $p.ckanTokenSecret.key }}
          path: token
{{- end -}}
