{{/* The release's name prefix of every object. */}}
{{- define "analytics.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The gRPC services of libs/config.py's SERVICES table: name, proto service, port (fixed in the
code: each service listens on its own default port when run alone). tests/deploy/test_helm.py
checks this table against SERVICES. */}}
{{- define "analytics.services" -}}
query-router: {proto: platformq.analytics.v1.QueryService, port: 50051, values: queryRouter}
realtime: {proto: platformq.analytics.v1.RealtimeService, port: 50052, values: realtime}
ml: {proto: platformq.analytics.v1.MLService, port: 50053, values: ml}
monitoring: {proto: platformq.analytics.v1.MonitoringService, port: 50054, values: monitoring}
{{- end -}}

{{- define "analytics.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (list $ "realtime"). */}}
{{- define "analytics.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "analytics.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}

{{/* DNS suffix of the services' names, for Envoy and the services' *_ADDRESS settings. */}}
{{- define "analytics.svcSuffix" -}}
{{ printf ".%s.svc.%s" .Release.Namespace .Values.clusterDomain }}
{{- end -}}

{{/* env of every analytics container: the ConfigMap, and the secrets by reference. */}}
{{- define "analytics.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "analytics.fullname" . }}-env
{{- if or .Values.pulsar.existingSecret (and .Values.engines.mlflow.enabled .Values.engines.mlflow.existingSecret) }}
env:
  {{- if .Values.pulsar.existingSecret }}
  - name: PULSAR_AUTH_TOKEN
    valueFrom:
      secretKeyRef: {name: {{ .Values.pulsar.existingSecret }}, key: token}
  {{- end }}
  {{- if and .Values.engines.mlflow.enabled .Values.engines.mlflow.existingSecret }}
  - name: MLFLOW_TRACKING_PASSWORD
    valueFrom:
      secretKeyRef: {name: {{ .Values.engines.mlflow.existingSecret }}, key: password}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Writable folders of a read-only root file system: /tmp and the data folder. */}}
{{- define "analytics.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}
