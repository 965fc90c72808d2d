"""The Helm chart's values, as pydantic models: ``helm/fleetserve/values.schema.json`` is
generated from :func:`values_json_schema` (``scripts/gen_values_schema.py``), and a test fails
when the two drift apart.

The ``fleet`` section is :class:`fleetserve.config.FleetConfig` itself, minus the fields that
would hold a secret (:data:`SECRET_FIELDS`): in the cluster those come from Kubernetes
Secrets and are put back by :mod:`fleetserve.kube.serve_app` where the application is built.
Kubernetes-native structures (resources, tolerations, affinity) are left open here; the
rendered objects are validated against Kubernetes' own schemas by the chart tests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetserve.config import FleetConfig

# (definition name in FleetConfig's JSON schema, field) pairs that values must never carry.
SECRET_FIELDS: tuple[tuple[str, str], ...] = (
    ("ServerConfig", "admin_key"),  # Secret <release>-admin (or secrets.admin.existingSecret)
    ("ServerConfig", "demo"),  # demo mode prints fresh keys into the logs
    ("TenantsConfig", "admin_key_hash"),  # computed from the admin Secret
    ("TenantsConfig", "redis_url"),  # may embed a password: redis.* builds it from a Secret
    ("TenantsConfig", "registry_file"),  # a file on the driver's disk; tenants are inline in values
    ("TenantSpec", "api_key_hashes"),  # Secret secrets.tenantKeyHashes: one key per tenant id
    ("MetricsConfig", "scrape_token_hash"),  # computed from the scrape token Secret (secrets.metrics)
)

K8sObject = dict[str, Any]


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageValues(_Values):
    repository: str = Field("ghcr.io/fleetserve/fleetserve", description="Image built from the repository's Dockerfile.")
    tag: str = Field("", description="Image tag; empty: '<appVersion>-<variant>' (Chart.yaml appVersion).")
    variant: Literal["cpu", "gpu"] = Field("gpu", description="Dockerfile target: 'cpu' (Ray base, native engine) or 'gpu' (vLLM base).")
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Kubernetes imagePullPolicy.")


class SecretRef(_Values):
    existingSecret: str = Field("", description="Name of a Secret you manage; empty: the chart creates '<release>-<suffix>'.")
    key: str = Field(description="Key inside the Secret.")


class SecretsValues(_Values):
    admin: SecretRef = Field(
        default_factory=lambda: SecretRef(key="admin-key"),
        description=(
            "Admin API key (plaintext, for `fleetserve status` and the spot watcher). The chart creates a random "
            "one, kept across upgrades, when existingSecret is empty; the cluster only ever sees its sha256 hash."
        ),
    )
    metrics: SecretRef = Field(
        default_factory=lambda: SecretRef(key="scrape-token"),
        description=(
            "Bearer token Prometheus presents to fleetserve's metrics listeners (the PodMonitor reads it from this "
            "Secret). The chart creates a random one, kept across upgrades, when existingSecret is empty; the cluster "
            "only ever sees its sha256 hash."
        ),
    )
    tenantKeyHashes: str = Field(
        "",
        description=(
            "Secret whose keys are tenant ids and whose values are that tenant's API key hashes ('sha256:<hex>', "
            "one per line or comma-separated). Mounted into the Ray pods; values never carry hashes."
        ),
    )


class GroupValues(_Values):
    """One Ray node group (the head, or a worker group)."""

    enabled: bool = Field(True, description="Workers only: whether this group exists.")
    replicas: int = Field(1, ge=0, description="Workers only: initial number of pods.")
    minReplicas: int = Field(0, ge=0, description="Workers only: KubeRay autoscaler lower bound.")
    maxReplicas: int = Field(1, ge=0, description="Workers only: KubeRay autoscaler upper bound.")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod (Ray detects num-gpus from the limit).")
    resources: K8sObject = Field(default_factory=dict, description="Container resources (cpu/memory requests and limits).")
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[K8sObject] = Field(default_factory=list, description="Pod tolerations.")
    affinity: K8sObject = Field(default_factory=dict, description="Pod affinity.")
    rayStartParams: dict[str, str] = Field(default_factory=dict, description="Extra `ray start` parameters (strings).")
    podLabels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    terminationGracePeriodSeconds: int = Field(
        90, ge=0, description="Time a pod gets to drain after SIGTERM; keep it above the models' drain_timeout_s."
    )


class WorkerGroupsValues(_Values):
    onDemand: GroupValues = Field(default_factory=GroupValues, description="On-demand GPU workers (the serving base).")
    spot: GroupValues = Field(
        default_factory=lambda: GroupValues(enabled=False), description="Spot GPU workers (burst; drained on termination notice)."
    )


class PersistenceValues(_Values):
    enabled: bool = Field(False, description="Keep Redis data on a volume claim (append-only file); off: an emptyDir.")
    size: str = Field("1Gi", description="Size of the claim.")
    storageClass: str = Field("", description="storageClassName of the claim; empty: the cluster default.")


class RedisInternal(_Values):
    image: str = Field("redis:7.4.2-alpine", description="Redis image (pinned).")
    persistence: PersistenceValues = Field(default_factory=PersistenceValues, description="The StatefulSet's volume.")
    resources: K8sObject = Field(default_factory=dict, description="Container resources.")


class RedisValues(_Values):
    mode: Literal["internal", "external", "none"] = Field(
        "internal",
        description="internal: a one-pod StatefulSet with a generated password; external: URL from a Secret; none: in-memory tenants (one ingress replica only).",
    )
    internal: RedisInternal = Field(default_factory=RedisInternal, description="The in-chart Redis.")
    external: SecretRef = Field(
        default_factory=lambda: SecretRef(key="redis-url"),
        description="Secret holding the full redis:// URL (credentials included) for mode external.",
    )


class ServiceValues(_Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type for REST and gRPC.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Service annotations.")


class IngressValues(_Values):
    enabled: bool = Field(False, description="Create Ingress objects.")
    className: str = Field("", description="ingressClassName.")
    host: str = Field("fleetserve.example.com", description="Host of the REST Ingress.")
    grpcHost: str = Field("", description="Host of a second Ingress for gRPC (backend-protocol GRPC); empty: none.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of both Ingresses.")
    tlsSecret: str = Field("", description="TLS Secret for the hosts; empty: no TLS section.")


class MetricsValues(_Values):
    serviceMonitor: bool = Field(
        True,
        description=(
            "Scrape every pod (Prometheus Operator CRDs must exist): a PodMonitor for fleetserve's metrics listeners "
            "(the ingress's and each model replica's, with the scrape token) and a ServiceMonitor for Ray's per-node export."
        ),
    )
    prometheusRule: bool = Field(True, description="Create the PrometheusRule with alerts.")
    dashboard: bool = Field(True, description="Create the Grafana dashboard ConfigMap (sidecar label grafana_dashboard=1).")
    interval: str = Field("15s", description="Scrape interval.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels for the ServiceMonitor/PrometheusRule (Prometheus selectors).")
    ttftSloBucket: str = Field(
        "1.0",
        pattern=r"^[0-9]+\.[0-9]+$",
        description=(
            "TTFT objective in seconds, written as the 'le' label of a bucket of fleetserve_time_to_first_token_seconds "
            "(fleetserve.metrics.names.LATENCY_BUCKETS: 0.25, 0.5, 1.0, 2.5, ...); requests slower than it burn the error budget."
        ),
    )
    sloTarget: float = Field(0.99, gt=0, lt=1, description="Share of requests that must meet the TTFT objective.")
    errorRateThreshold: float = Field(0.05, gt=0, lt=1, description="Alert when this share of requests ends in a 5xx.")
    queueDepthThreshold: int = Field(20, ge=1, description="Queue depth alert: waiting requests per model that, still growing, page.")


class PdbValues(_Values):
    enabled: bool = Field(True, description="Create a PodDisruptionBudget for the on-demand GPU workers.")
    maxUnavailable: int = Field(1, ge=1, description="On-demand workers a voluntary disruption may take at once.")


class NetworkPolicyValues(_Values):
    enabled: bool = Field(True, description="Restrict ingress to the Ray pods (the Serve ports listen on the pod interface).")
    servingFrom: list[K8sObject] = Field(
        default_factory=list, description="NetworkPolicyPeers allowed to the REST/gRPC ports; empty: any source."
    )
    adminFrom: list[K8sObject] = Field(
        default_factory=list,
        description=("NetworkPolicyPeers allowed to fleet.server.admin_port besides this release's pods; empty: "
                     "those pods only (kubectl port-forward is not subject to the policy)."),
    )
    operatorNamespace: str = Field("kuberay-system", description="Namespace of the KubeRay operator (reaches the dashboard port).")
    monitoringNamespace: str = Field("monitoring", description="Namespace of Prometheus (reaches the metrics ports).")


class SpotWatcherValues(_Values):
    enabled: bool = Field(True, description="Run the node watcher that drains nodes about to terminate.")
    drainOnAdvisory: bool = Field(False, description="Also drain on advisory signals (AWS rebalance recommendation).")
    resources: K8sObject = Field(
        default_factory=lambda: {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        description="Container resources.",
    )


class ModelStorageValues(_Values):
    persistentVolumeClaim: str = Field(
        "", description="PVC with checkpoints, mounted on every Ray pod; empty: an emptyDir (filled by huggingFace)."
    )
    mountPath: str = Field("/models", description="Where the model volume is mounted (point models[].checkpoint below it).")
    huggingFace: list[str] = Field(
        default_factory=list,
        description=(
            "Hugging Face repositories an init container downloads into <mountPath>/<repo name> on every Ray pod "
            "(the head fetches only the tokenizer files its ingress reads). The PVC, if set, must then be writable."
        ),
    )
    hfTokenSecret: str = Field("", description="Secret with key HF_TOKEN for gated repositories; empty: anonymous.")


class ChartValues(_Values):
    """Everything ``helm install -f values.yaml`` accepts."""

    nameOverride: str = Field("", description="Replaces the chart name in object names.")
    image: ImageValues = Field(default_factory=ImageValues, description="fleetserve image.")
    imagePullSecrets: list[K8sObject] = Field(default_factory=list, description="Pull secrets for the image.")
    rayVersion: str = Field("2.60.0", description="Ray version of the image (KubeRay rayVersion).")
    fleet: FleetConfig = Field(description="The fleetserve configuration (docs/configuration.md) without secrets.")
    secrets: SecretsValues = Field(default_factory=SecretsValues, description="Where keys come from.")
    redis: RedisValues = Field(default_factory=RedisValues, description="Tenant store.")
    head: GroupValues = Field(default_factory=GroupValues, description="Ray head pod (Serve controller, proxies, ingress).")
    workerGroups: WorkerGroupsValues = Field(default_factory=WorkerGroupsValues, description="GPU worker groups.")
    service: ServiceValues = Field(default_factory=ServiceValues, description="Service in front of the Serve proxies.")
    ingress: IngressValues = Field(default_factory=IngressValues, description="Optional Ingress for REST and gRPC.")
    metrics: MetricsValues = Field(default_factory=MetricsValues, description="ServiceMonitor, alerts and dashboard.")
    podDisruptionBudget: "PdbValues" = Field(default_factory=lambda: PdbValues(), description="PodDisruptionBudget.")
    networkPolicy: NetworkPolicyValues = Field(default_factory=NetworkPolicyValues, description="NetworkPolicy.")
    spotWatcher: SpotWatcherValues = Field(default_factory=SpotWatcherValues, description="Node termination watcher.")
    modelStorage: ModelStorageValues = Field(default_factory=ModelStorageValues, description="Checkpoint volume.")


def _drop_secret_fields(schema: dict) -> None:
    defs = schema.get("$defs", {})
    for name, field in SECRET_FIELDS:
        d = defs.get(name)
        if d is None:
            continue  # a section whose subpackage is not in this build
        d.get("properties", {}).pop(field, None)
        if field in d.get("required", []):
            d["required"].remove(field)


def values_json_schema() -> dict:
    """JSON schema of the chart's values (what ``values.schema.json`` holds)."""
    schema = ChartValues.model_json_schema(mode="validation")
    _drop_secret_fields(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$comment"] = "Generated by scripts/gen_values_schema.py from fleetserve.kube.chart_values; do not edit."
    return schema
