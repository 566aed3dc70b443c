{{/* The HorizontalPodAutoscaler (CPU and memory) and PodDisruptionBudget of one stateless
component: (list $ name values kind). */}}
{{- define "analytics.scaling" -}}
{{- $ := index . 0 -}}
{{- $name := index . 1 -}}
{{- $v := index . 2 -}}
{{- $full := include "analytics.fullname" $ -}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $full }}-{{ $name }}
  labels:
    {{- include "analytics.labels" $ | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ index . 3 }}
    name: {{ $full }}-{{ $name }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}}
    - type: Resource
      resource:
        name: memory
        target: {type: Utilization, averageUtilization: {{ $v.autoscaling.targetMemoryUtilizationPercentage }}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $full }}-{{ $name }}
  labels:
    {{- include "analytics.labels" $ | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  minAvailable: {{ $v.pdb.minAvailable }}
  selector:
    matchLabels:
      {{- include "analytics.selector" (list $ $name) | nindent 6 }}
{{- end -}}
