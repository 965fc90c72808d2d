"""Top-level configuration schema: one pydantic model written as YAML.

Sections: ``server`` (ports, keys), ``models`` (one entry per served model), and ``tenants``,
``autoscaler`` and ``canary`` (schemas owned by their subpackages).

``load_config(path)`` / ``parse_config(data)`` raise :class:`fleetserve.errors.ConfigError`
whose ``field`` is the dotted path of the first offending field (``models.0.replicas.max``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetserve.autoscaler.config import AutoscalerConfig
from fleetserve.canary.config import CanaryConfig
from fleetserve.engine.lora.config import ADAPTER_ID_RE, AdapterConfig  # noqa: F401 - re-exported
from fleetserve.errors import ConfigError
from fleetserve.metrics.config import MetricsConfig
from fleetserve.tenants.config import TenantsConfig
from fleetserve.exposure import PLACEHOLDER_ADMIN_HASHES, admin_key_problem, is_loopback, refusal

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class ServerConfig(BaseModel):
    """Where and how the platform listens."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface the REST and gRPC proxies bind to ('0.0.0.0' for all).")
    port: int = Field(8000, ge=0, le=65535, description="REST (OpenAI-compatible HTTP) port; 0 picks a free port.")
    grpc_port: Optional[int] = Field(
        9000, ge=0, le=65535, description="gRPC port of Serve's gRPC proxy; null disables gRPC; 0 picks a free port."
    )
    app_name: str = Field("fleetserve", description="Ray Serve application name (gRPC calls name it in 'application' metadata).")
    route_prefix: str = Field("/", description="HTTP route prefix of the application.")
    admin_key: Optional[str] = Field(
        None,
        min_length=16,
        description=(
            "Admin API key (Bearer) for /admin/*. Null: `fleetserve serve` reads FLEETSERVE_ADMIN_KEY, demo mode "
            "generates one, else the admin API is off. Hashed before the config leaves the process that parsed it. "
            "Where the admin API is reachable beyond loopback, a short, low-entropy or placeholder key is refused."
        ),
    )
    admin_host: str = Field(
        "127.0.0.1",
        description="Interface of the separate admin listener (with admin_port); loopback by default.",
    )
    admin_port: Optional[int] = Field(
        None,
        ge=0,
        le=65535,
        description=(
            "Serve /admin/* on this port of admin_host only (every ingress replica listens there, SO_REUSEPORT), and "
            "refuse it (404) on the tenant REST port. Null: /admin/* is served on the tenant REST port, as the "
            "local demo and `fleetserve tenants` expect; set it in production so tenants cannot reach the admin API."
        ),
    )
    grpc_max_message_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=(1 << 31) - 1,
        description=(
            "Largest gRPC message Serve's gRPC listeners receive or send (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE; Ray's "
            "default is 2 GiB). Larger messages end with RESOURCE_EXHAUSTED before they are buffered; requests "
            "between max_request_body_bytes and this get the 413-equivalent from the servicer. Like "
            "serve_throughput_optimized it must be in the environment Ray starts with."
        ),
    )
    demo: bool = Field(
        False, description="Create a demo tenant and key at start (for `fleetserve serve` on a laptop; never in production)."
    )
    max_request_body_bytes: int = Field(
        1 << 20, ge=1024, description="Requests with a larger body are rejected with HTTP 413."
    )
    stream_send_timeout_s: Optional[float] = Field(
        30.0,
        gt=0,
        description=(
            "A streamed response whose client accepts no bytes for this long (one write blocked on TCP flow control) "
            "is cancelled like a disconnect: the request is aborted in the engine (its KV blocks freed), metered as "
            "aborted, and the connection closed. null: wait for ever."
        ),
    )
    ingress_replicas: int = Field(1, ge=1, description="Number of ingress (API) replicas.")
    request_timeout_s: Optional[float] = Field(
        None, gt=0, description="End-to-end timeout Serve's proxies apply to one request; null: none."
    )
    ray_worker_niceness: Optional[int] = Field(
        0, ge=0, le=19,
        description=(
            "Niceness of Ray's worker processes (RAY_worker_niceness). Ray's default, 15, keeps raylet and GCS "
            "responsive under batch jobs, but here the workers are the request path (ingress, replica event loops), "
            "and at 15 every node daemon and co-located process preempts them; model compute already yields "
            "through its SCHED_IDLE step thread. On the 2-core overload bench the difference was within noise "
            "(docs/benchmarks.md). null: Ray's default. Like serve_throughput_optimized it must be in the "
            "environment Ray starts with."
        ),
    )
    proxy: Literal["auto", "haproxy", "python"] = Field(
        "auto",
        description=(
            "What serves the REST/gRPC ports. 'haproxy': Ray Serve's HAProxy mode (RAY_SERVE_ENABLE_HA_PROXY): an "
            "haproxy process forwards each connection to an ingress replica's own HTTP/gRPC port, so no Python "
            "process parses or relays requests before the tenant-aware ingress sees them (ray[serve] bundles the "
            "binary on Linux; RAY_SERVE_HAPROXY_BINARY_PATH or PATH otherwise). 'python': Serve's Python "
            "proxy actor, which handles every request and streamed chunk in arrival order before any tenant is "
            "known; under overload it is where premium latency is lost (docs/benchmarks.md). 'auto': haproxy when "
            "the binary is found, else python. Like serve_throughput_optimized it must be in the environment Ray "
            "starts with."
        ),
    )
    gc_gen2_threshold: Optional[int] = Field(
        1000,
        ge=1,
        description=(
            "CPython's full-collection threshold (the third value of gc.set_threshold; Python's default is 10) in "
            "the ingress and replica processes, set through FLEETSERVE_GC_GEN2_THRESHOLD. Under overload the "
            "ingress holds thousands of queued requests; with the default every growth of that heap by a quarter "
            "triggers a full collection, 100-190 ms on the 2-core overload bench, and every request in flight "
            "waits it out (docs/benchmarks.md, GC). Young collections are unchanged, and full ones still run, "
            "100x less often. null: Python's default. Like serve_throughput_optimized it must be in the environment "
            "Ray starts with."
        ),
    )
    replica_transport: Literal["direct", "serve"] = Field(
        "direct",
        description=(
            "How the ingress streams from model replicas. 'direct': over one authenticated TCP link per replica "
            "(deployments/replica_link.py; HMAC with a secret kept in Ray's GCS), which costs each side a fraction "
            "of a Serve handle call's CPU; replica choice, health, preemption and scaling still go through Serve, "
            "and a replica that advertises no link is reached through its handle. 'serve': every request through "
            "Serve DeploymentHandle calls."
        ),
    )
    serve_throughput_optimized: bool = Field(
        True,
        description=(
            "Run Ray Serve with RAY_SERVE_THROUGHPUT_OPTIMIZED=1: user code and the router on the replica's main event "
            "loop, gRPC between deployments, ingress replicas serving HTTP themselves. It cuts the per-request and "
            "per-chunk CPU of the serving path (measured in bench/bench_overload.py). It must be in the environment of "
            "every Ray process: `fleetserve serve` sets it for the cluster it starts; on an existing cluster set it in "
            "the cluster's environment (the Helm values do)."
        ),
    )

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @property
    def admin_listen_host(self) -> str:
        """The interface the admin API is reachable on."""
        return self.admin_host if self.admin_port is not None else self.host

    @model_validator(mode="after")
    def _admin_key_strength(self) -> "ServerConfig":
        if self.admin_key is not None:
            problem = admin_key_problem(self.admin_key)
            if problem and not is_loopback(self.admin_listen_host):
                raise ValueError(refusal(problem, self.admin_listen_host, "server.admin_key"))
        return self


class ReplicasConfig(BaseModel):
    """How many replicas of one model run. ``min``/``max`` bound the autoscaler."""

    model_config = ConfigDict(extra="forbid")

    num: int = Field(1, ge=1, description="Initial (and, without an autoscaler, fixed) number of replicas.")
    min: Optional[int] = Field(None, ge=0, description="Lower bound for autoscaling; default: num.")
    max: Optional[int] = Field(None, ge=1, description="Upper bound for autoscaling; default: num.")

    @model_validator(mode="after")
    def _bounds(self) -> "ReplicasConfig":
        lo = self.num if self.min is None else self.min
        hi = self.num if self.max is None else self.max
        if lo > hi:
            raise ValueError(f"min ({lo}) must be <= max ({hi})")
        if not lo <= self.num <= hi:
            raise ValueError(f"num ({self.num}) must lie within [min, max] = [{lo}, {hi}]")
        return self

    @property
    def min_replicas(self) -> int:
        return self.num if self.min is None else self.min

    @property
    def max_replicas(self) -> int:
        return self.num if self.max is None else self.max


class ResourcesConfig(BaseModel):
    """Ray resources reserved by each replica actor."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica (vLLM with tensor_parallel_size N needs N).")


class RoutingConfig(BaseModel):
    """Replica choice for one model (see fleetserve.router.replica_router)."""

    model_config = ConfigDict(extra="forbid")

    prefix_affinity_blocks: int = Field(
        2, ge=0, description="Prompt blocks (of block_size tokens) hashed with the tenant for prefix affinity; 0 disables it."
    )
    block_size: int = Field(16, ge=1, description="Tokens per hashed prompt block.")
    stats_period_s: float = Field(1.0, gt=0, description="How often replicas push live stats to the router.")
    even_load_slack: int = Field(
        2, ge=0, description="Two replicas whose load scores differ by at most this count as evenly loaded."
    )


class ModelConfig(BaseModel):
    """One served model: its checkpoint, engine and fleet shape."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name clients pass as `model`.")
    checkpoint: str = Field(description="Local path of a Hugging Face-format checkpoint directory.")
    engine: Literal["native", "vllm"] = Field("native", description="Engine backend hosted by each replica.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Engine arguments. native: fields of fleetserve.engine.config.EngineConfig (model is the checkpoint). "
            "vllm: fields of vllm AsyncEngineArgs, including tensor_parallel_size."
        ),
    )
    version: str = Field("v1", description="Version label (metrics, canary).")
    replicas: ReplicasConfig = Field(default_factory=ReplicasConfig, description="Replica counts.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Per-replica Ray resources.")
    max_ongoing_requests: int = Field(
        100, ge=1, description="Requests Serve lets into one replica at once; Serve's default of 5 collapses streaming."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="On shutdown, how long in-flight requests may finish.")
    drain_mode: Literal["migrate", "finish"] = Field(
        "migrate",
        description=(
            "What a drained replica (admin or node drain, scale-down, shutdown) does with its in-flight requests. "
            "'migrate': hands each back to its ingress at once, which continues it on another replica from the tokens "
            "the client already has (same text for greedy and seeded sampling on the native engine; docs/operations.md). "
            "'finish': lets them finish there (up to drain_timeout_s on shutdown)."
        ),
    )
    stream_interval_s: float = Field(
        0.05,
        ge=0.0,
        le=10.0,
        description=(
            "Streaming granularity of every request to this model: after the first chunk, at most one chunk per this many "
            "seconds, carrying every token produced meanwhile (none lost or repeated; the first and the last token are "
            "never held back). Each chunk costs a Ray object, an SSE event and a proxy message, so "
            "per-step chunks spend the serving path's CPU on streams rather than requests (Ray Serve LLM batches streams "
            "at 50 ms for the same reason). 0: one chunk per engine step. A class's "
            "tenants.scheduling.stream_interval_s may ask for coarser."
        ),
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="Replica router settings.")
    tool_call_parser: Optional[Literal["hermes"]] = Field(
        "hermes",
        description=(
            "How chat output with tool_choice=auto is read back as tool_calls. hermes: <tool_call>{\"name\": ..., "
            "\"arguments\": {...}}</tool_call> blocks (Hermes, Qwen2.5/3, and the tiny test model's template). null: "
            "the text stays content. tool_choice=required and named functions need no parser (constrained decoding)."
        ),
    )
    adapters: list[AdapterConfig] = Field(
        default_factory=list,
        description="LoRA adapters served from startup (native: needs engine_args.enable_lora; vllm: enable_lora).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not MODEL_NAME_RE.match(v):
            raise ValueError("must be 1-128 characters of letters, digits and . _ : / -, starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _engine_args(self) -> "ModelConfig":
        if self.engine == "vllm":
            tp = self.engine_args.get("tensor_parallel_size", 1)
            if not isinstance(tp, int) or tp < 1:
                raise ValueError(f"engine_args.tensor_parallel_size must be a positive integer, got {tp!r}")
            if self.resources.num_gpus and self.resources.num_gpus < tp:
                raise ValueError(
                    f"resources.num_gpus ({self.resources.num_gpus}) must be >= engine_args.tensor_parallel_size ({tp})"
                )
        return self

    def native_engine_config(self):
        """The validated native EngineConfig (raises pydantic ValidationError)."""
        from fleetserve.engine.config import EngineConfig

        return EngineConfig(**{"model": self.checkpoint, **self.engine_args})


class FleetConfig(BaseModel):
    """The whole platform: one YAML file."""

    model_config = ConfigDict(extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig, description="Listeners and keys.")
    models: list[ModelConfig] = Field(min_length=1, description="Served models (at least one).")
    tenants: Optional[TenantsConfig] = Field(None, description="Multi-tenancy (fleetserve.tenants.config).")
    canary: CanaryConfig = Field(default_factory=CanaryConfig, description="Canary rollouts (fleetserve.canary.config).")
    autoscaler: Optional[AutoscalerConfig] = Field(None, description="Autoscaler (fleetserve.autoscaler.config).")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Private Prometheus listeners of the ingress and replicas (fleetserve.metrics.config)."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "FleetConfig":
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"duplicate model name {m.name!r}")
            seen.add(m.name)
        return self

    @model_validator(mode="after")
    def _no_placeholder_admin_hash(self) -> "FleetConfig":
        host = self.server.admin_listen_host
        if self.tenants is not None and self.tenants.admin_key_hash in PLACEHOLDER_ADMIN_HASHES and not is_loopback(host):
            raise ValueError(refusal("it is a placeholder published in fleetserve's examples", host,
                                     "tenants.admin_key_hash"))
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def _config_error(exc: ValidationError, prefix: tuple = ()) -> ConfigError:
    errs = exc.errors()
    first = errs[0]
    path = _dotted(prefix + tuple(first["loc"]))
    lines = [f"{_dotted(prefix + tuple(e['loc']))}: {e['msg']}" for e in errs]
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines), field=path)


def parse_config(data: Union[dict, None]) -> FleetConfig:
    """Validate a dict (parsed YAML) into a FleetConfig; raises ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a mapping at the top level", field="<root>")
    try:
        cfg = FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc) from None
    for i, m in enumerate(cfg.models):
        if m.engine != "native":
            continue
        try:
            m.native_engine_config()
        except ValidationError as exc:
            raise _config_error(exc, ("models", i, "engine_args")) from None
    return cfg


def load_config(path: Union[str, Path]) -> FleetConfig:
    """Read and validate a YAML config file. ``~`` expands; a relative checkpoint that exists next to the file resolves against it."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}", field="<file>") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}", field="<file>") from None
    cfg = parse_config(data)
    for m in cfg.models:
        ck = Path(m.checkpoint).expanduser()
        if not ck.is_absolute() and (p.parent / ck).exists():
            ck = (p.parent / ck).resolve()
        m.checkpoint = str(ck)  # otherwise kept (relative to the cwd, or a hub id for vLLM)
    return cfg


def dump_config(cfg: FleetConfig) -> str:
    """YAML text of a config (round-trips through load_config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
