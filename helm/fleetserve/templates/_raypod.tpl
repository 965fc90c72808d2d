{{/* Pod spec of a Ray node: (dict "root" $ "group" <GroupValues> "head" bool). */}}
{{- define "fleetserve.rayPodSpec" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $server := $root.Values.fleet.server -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "fleetserve.podSecurityContext" $root | nindent 2 }}
terminationGracePeriodSeconds: {{ $group.terminationGracePeriodSeconds }}
{{- with $group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.modelStorage.huggingFace }}
initContainers:
  # The ingress (head) reads only the tokenizer; model replicas (workers) need the weights.
  - name: fetch-models
    image: {{ include "fleetserve.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["python", "-m", "fleetserve.kube.fetch_models", "--dest", {{ $root.Values.modelStorage.mountPath | quote }}
              {{- if and $.head (or $root.Values.workerGroups.onDemand.enabled $root.Values.workerGroups.spot.enabled) }}, "--tokenizer-only"{{ end }}
              {{- range . }}, {{ . | quote }}{{ end }}]
    {{- with $root.Values.modelStorage.hfTokenSecret }}
    env:
      - name: HF_TOKEN
        valueFrom:
          secretKeyRef: {name: {{ . }}, key: HF_TOKEN}
    {{- end }}
    securityContext:
      {{- include "fleetserve.securityContext" $root | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: {{ $root.Values.modelStorage.mountPath }}
{{- end }}
containers:
  - name: {{ ternary "ray-head" "ray-worker" .head }}
    image: {{ include "fleetserve.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    securityContext:
      {{- include "fleetserve.securityContext" $root | nindent 6 }}
    env:
      {{- include "fleetserve.rayEnv" $root | nindent 6 }}
    ports:
      {{- if .head }}
      - {name: gcs, containerPort: 6379}
      - {name: dashboard, containerPort: 8265}
      - {name: client, containerPort: 10001}
      {{- end }}
      - {name: serve, containerPort: {{ $server.port }}}
      {{- if not (kindIs "invalid" $server.grpc_port) }}
      - {name: grpc, containerPort: {{ $server.grpc_port }}}
      {{- end }}
      {{- if and (not (kindIs "invalid" $server.admin_port)) (eq .capacity "on_demand") }}
      - {name: admin, containerPort: {{ $server.admin_port }}}
      {{- end }}
      - {name: ray-metrics, containerPort: 8080}
      {{- /* fleetserve's metrics listeners: the ingress and each model replica take one port of the range. */}}
      {{- range $i := until (int $root.Values.fleet.metrics.port_range) }}
      - {name: fs-metrics-{{ $i }}, containerPort: {{ add $root.Values.fleet.metrics.port $i }}}
      {{- end }}
      {{- if and $server.serve_throughput_optimized (or .head (eq .capacity "on_demand")) }}
      - {name: direct-ingress, containerPort: 30000}
      {{- end }}
    {{- if not .head }}
    lifecycle:
      preStop:
        # Ray stops taking work on this node; Serve moves its replicas (each drains for drain_timeout_s).
        exec:
          command: ["/bin/sh", "-c", "ray stop --grace-period {{ sub $group.terminationGracePeriodSeconds 10 }} || true"]
    {{- end }}
    resources:
      {{- $res := deepCopy (default dict $group.resources) }}
      {{- if $group.gpus }}
      {{- $limits := merge (dict "nvidia.com/gpu" ($group.gpus | toString)) (default dict $res.limits) }}
      {{- $_ := set $res "limits" $limits }}
      {{- end }}
      {{- toYaml $res | nindent 6 }}
    volumeMounts:
      {{- include "fleetserve.rayVolumeMounts" $root | nindent 6 }}
volumes:
  {{- include "fleetserve.rayVolumes" $root | nindent 2 }}
{{- end -}}
