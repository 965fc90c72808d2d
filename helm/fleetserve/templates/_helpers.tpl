{{/* Names and labels shared by every object of the release. */}}
{{- define "fleetserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetserve.fullname" -}}
{{- $name := include "fleetserve.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fleetserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fleetserve.labels" -}}
{{ include "fleetserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Pods of the Ray cluster (head and workers): what the Service, PDB and NetworkPolicy select. */}}
{{- define "fleetserve.rayPodLabels" -}}
{{ include "fleetserve.selectorLabels" . }}
fleetserve.io/component: ray
{{- end -}}

{{- define "fleetserve.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.variant) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "fleetserve.metricsSecretName" -}}
{{- .Values.secrets.metrics.existingSecret | default (printf "%s-metrics" (include "fleetserve.fullname" .)) -}}
{{- end -}}

{{- define "fleetserve.adminSecretName" -}}
{{- .Values.secrets.admin.existingSecret | default (printf "%s-admin" (include "fleetserve.fullname" .)) -}}
{{- end -}}

{{- define "fleetserve.redisHost" -}}
{{- printf "%s-redis" (include "fleetserve.fullname" .) -}}
{{- end -}}

{{- define "fleetserve.serviceName" -}}
{{- include "fleetserve.fullname" . -}}
{{- end -}}

{{/*
Environment of every Ray container. The Serve tuning variables are what
fleetserve.deployments.ray_env.serve_env() sets for `fleetserve serve` (a test compares them):
Ray Serve reads them at import time in every Ray process, so they must be in the pod's environment.
proxy "auto" means haproxy here: the image's ray[serve] bundles the binary on Linux.
*/}}
{{- define "fleetserve.rayEnv" -}}
{{- $server := .Values.fleet.server -}}
{{- if $server.serve_throughput_optimized }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
{{- end }}
{{- if not (kindIs "invalid" $server.ray_worker_niceness) }}
- name: RAY_worker_niceness
  value: {{ $server.ray_worker_niceness | quote }}
{{- end }}
{{- if not (kindIs "invalid" $server.gc_gen2_threshold) }}
- name: FLEETSERVE_GC_GEN2_THRESHOLD
  value: {{ $server.gc_gen2_threshold | quote }}
{{- end }}
{{- if not (kindIs "invalid" $server.grpc_max_message_bytes) }}
- name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE
  value: {{ $server.grpc_max_message_bytes | int64 | toString | quote }}
{{- end }}
{{- if ne $server.proxy "python" }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
{{- end }}
- name: FLEETSERVE_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "fleetserve.adminSecretName" . }}
      key: {{ .Values.secrets.admin.key }}
- name: FLEETSERVE_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "fleetserve.metricsSecretName" . }}
      key: {{ .Values.secrets.metrics.key }}
{{- if eq .Values.redis.mode "internal" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fleetserve.redisHost" . }}
      key: password
- name: FLEETSERVE_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "fleetserve.redisHost" .) | quote }}
{{- else if eq .Values.redis.mode "external" }}
- name: FLEETSERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "redis.external.existingSecret is required when redis.mode is external" .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.key }}
{{- end }}
{{- if .Values.secrets.tenantKeyHashes }}
- name: FLEETSERVE_TENANT_KEYS_DIR
  value: /etc/fleetserve/tenant-keys
{{- end }}
{{- end -}}

{{- define "fleetserve.rayVolumeMounts" -}}
- name: ray-logs
  mountPath: /tmp/ray
{{- if .Values.secrets.tenantKeyHashes }}
- name: tenant-keys
  mountPath: /etc/fleetserve/tenant-keys
  readOnly: true
{{- end }}
{{- if or .Values.modelStorage.persistentVolumeClaim .Values.modelStorage.huggingFace }}
- name: models
  mountPath: {{ .Values.modelStorage.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "fleetserve.rayVolumes" -}}
- name: ray-logs
  emptyDir: {}
{{- if .Values.secrets.tenantKeyHashes }}
- name: tenant-keys
  secret:
    secretName: {{ .Values.secrets.tenantKeyHashes }}
{{- end }}
{{- if .Values.modelStorage.persistentVolumeClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelStorage.persistentVolumeClaim }}
    readOnly: {{ empty .Values.modelStorage.huggingFace }}
{{- else if .Values.modelStorage.huggingFace }}
- name: models
  emptyDir: {}
{{- end }}
{{- end -}}

{{- define "fleetserve.securityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "fleetserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end -}}
