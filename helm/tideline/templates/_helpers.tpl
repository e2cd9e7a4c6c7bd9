{{/* Labels of every object: the kustomize base's (name, component, part-of) + Helm's bookkeeping. */}}
{{- define "tideline.labels" -}}
app.kubernetes.io/name: tideline
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: tideline
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "tideline.selector" -}}
app.kubernetes.io/name: tideline
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{- define "tideline.image" -}}
{{ .img.repository }}:{{ .img.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* The CronWorkflows and the S3 endpoint name namespace "tideline": refuse any other. */}}
{{/* The release namespace: everything the chart names in it follows it (helm ... -n NAME). */}}
{{- define "tideline.namespace" -}}
{{ .Release.Namespace }}
{{- end -}}

{{/* The S3 endpoint every pod uses: s3.endpoint (an external S3), else the in-chart MinIO of this namespace. */}}
{{- define "tideline.s3Endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{ .Values.s3.endpoint }}
{{- else if .Values.minio.enabled -}}
http://minio.{{ include "tideline.namespace" . }}.svc:9000
{{- else -}}
{{- fail "minio.enabled=false needs s3.endpoint (the external S3 the registry lives in, e.g. https://s3.eu-west-1.amazonaws.com)" -}}
{{- end -}}
{{- end -}}

{{- define "tideline.s3env" -}}
- name: TIDELINE_REGISTRY
  value: {{ .Values.registry | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ include "tideline.s3Endpoint" . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: tideline-s3
      key: access-key-id
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: tideline-s3
      key: secret-access-key
- name: HOME
  value: /tmp
{{- end -}}

{{- define "tideline.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "tideline.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tideline.s3annotations" -}}
{{- $url := urlParse (include "tideline.s3Endpoint" .) }}
{{- $https := eq $url.scheme "https" }}
serving.kserve.io/s3-endpoint: {{ $url.host | quote }}
serving.kserve.io/s3-usehttps: {{ ternary "1" "0" $https | quote }}
serving.kserve.io/s3-verifyssl: {{ ternary "1" "0" $https | quote }}
serving.kserve.io/s3-region: {{ .Values.s3.region | quote }}
{{- end -}}


{{/* Signing (values.signing): the key file env, its read-only mount and the Secret volume; empty when off. */}}
{{- define "tideline.signingEnv" -}}
{{- if .Values.signing.enabled }}
- name: TIDELINE_SIGNING_KEY_FILE
  value: /var/run/secrets/tideline/signing/key
- name: TIDELINE_REQUIRE_SIGNED
  value: {{ ternary "1" "0" .Values.signing.requireSigned | quote }}
{{- end }}
{{- end -}}

{{- define "tideline.signingMount" -}}
{{- if .Values.signing.enabled }}
- name: signing-key
  mountPath: /var/run/secrets/tideline/signing
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tideline.signingVolume" -}}
{{- if .Values.signing.enabled }}
- name: signing-key
  secret:
    secretName: {{ .Values.signing.existingSecret }}
    items:
      - key: {{ .Values.signing.secretKey }}
        path: key
    defaultMode: 0444
{{- end }}
{{- end -}}
