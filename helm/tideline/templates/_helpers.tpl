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
{{- define "tideline.namespace" -}}
{{- if ne .Release.Namespace "tideline" -}}
{{- fail (printf "install this chart into namespace tideline (helm ... -n tideline), not %q: the CronWorkflows and the MinIO endpoint are named for it" .Release.Namespace) -}}
{{- end -}}
{{ .Release.Namespace }}
{{- end -}}

{{- define "tideline.s3env" -}}
- name: TIDELINE_REGISTRY
  value: {{ .Values.registry | quote }}
- name: AWS_ENDPOINT_URL
  value: http://minio.{{ include "tideline.namespace" . }}.svc:9000
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
serving.kserve.io/s3-endpoint: minio.{{ include "tideline.namespace" . }}.svc:9000
serving.kserve.io/s3-usehttps: "0"
serving.kserve.io/s3-verifyssl: "0"
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
