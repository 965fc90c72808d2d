"""Every metric fleetserve exports, declared once: name, kind, help text and labels.

Label names are fixed here (``tenant``, ``model``, ``version``, ``replica``, ...) so a
dashboard or an alert never has to guess which component spelled a label which way.
Components build their series from these specs (:func:`fleetserve.metrics.registry.build_metric`)
and never spell a metric name or a label themselves.

Counter names end in ``_total``, as exported; prometheus_client would append it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

TENANT = "tenant"
MODEL = "model"
VERSION = "version"
REPLICA = "replica"
STATUS = "status"
OUTCOME = "outcome"
REASON = "reason"
PRIORITY_CLASS = "priority_class"
FEATURE = "feature"
EVENT = "event"
CHECK = "check"
MODEL_NAME = "model_name"  # vLLM's label for the served model (engine-level series use it, as vLLM does)
FINISHED_REASON = "finished_reason"  # vLLM's: stop, length, abort, error

# Latency buckets (seconds): fine below 100 ms where TTFT/TPOT live, coarse up to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: Optional[tuple[float, ...]] = None


# ---- ingress (fleetserve.metrics.registry.FleetMetrics) -------------------------------------

REQUESTS = MetricSpec("fleetserve_requests_total", "counter", "API requests by outcome (HTTP-style status).", (TENANT, MODEL, VERSION, STATUS))
PROMPT_TOKENS = MetricSpec("fleetserve_prompt_tokens_total", "counter", "Prompt tokens processed.", (TENANT, MODEL, VERSION))
COMPLETION_TOKENS = MetricSpec("fleetserve_completion_tokens_total", "counter", "Completion tokens generated.", (TENANT, MODEL, VERSION))
TTFT = MetricSpec("fleetserve_time_to_first_token_seconds", "histogram", "Arrival at the ingress to the first generated token.", (TENANT, MODEL, VERSION), LATENCY_BUCKETS)
TPOT = MetricSpec("fleetserve_time_per_output_token_seconds", "histogram", "Mean time between output tokens after the first, per choice.", (TENANT, MODEL, VERSION), TOKEN_LATENCY_BUCKETS)
E2E = MetricSpec("fleetserve_e2e_request_latency_seconds", "histogram", "Arrival at the ingress to the last token.", (TENANT, MODEL, VERSION), LATENCY_BUCKETS)
STREAM_RESUMES = MetricSpec("fleetserve_stream_resumes_total", "counter", "Replica streams continued on another replica (reason: migrated on a drain, or lost: replica died, link closed, request ended under it).", (MODEL, VERSION, REASON))
IN_FLIGHT = MetricSpec("fleetserve_requests_in_flight", "gauge", "Requests being served by this ingress.", (MODEL, VERSION))
WARM_REPLICAS = MetricSpec("fleetserve_warm_replicas", "gauge",
                           "Warm-pool standbys (loaded, engine asleep, out of routing) as the replicas report them, "
                           "per model/version; 0 without a warm pool. Exported by every ingress only (one source: "
                           "the controller's /metrics/scaling does not repeat it).",
                           (MODEL, VERSION))

# ---- A/B analysis per variant (fleetserve.canary.ab_recorder) -------------------------------

FEEDBACK = MetricSpec("fleetserve_feedback_total", "counter", "Feedback received (POST /v1/feedback), per variant; outcome: positive, negative or numeric.", (TENANT, MODEL, VERSION, OUTCOME))
PREDICTIONS_LOGGED = MetricSpec("fleetserve_predictions_logged_total", "counter", "Requests written to the sampled prediction log, per variant.", (MODEL, VERSION))
DRIFT_PSI = MetricSpec("fleetserve_drift_psi", "gauge", "PSI of a version's recent requests against the model's baseline window, per feature (prompt_length, output_length, first_token); > 0.2 is a significant shift.", (MODEL, VERSION, FEATURE))

AB = (FEEDBACK, PREDICTIONS_LOGGED, DRIFT_PSI)

INGRESS = (REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS, TTFT, TPOT, E2E, IN_FLIGHT, STREAM_RESUMES, WARM_REPLICAS) + AB

# ---- engine, per model replica (fleetserve.metrics.engine_metrics) ---------------------------
# vLLM's names and its ``model_name`` label (vllm/v1/metrics/loggers.py, vLLM 0.32), so vLLM
# dashboards, autoscalers reading vLLM metrics and the Gateway API inference extension work on
# fleetserve. Each replica serves its own on its metrics port; a replica with ``engine: vllm``
# serves vLLM's own series of these names instead (plus fleetserve's version/replica labels).
# Latencies here are the engine's (arrival at the replica), not the client's: those are the
# ``fleetserve_*`` series of the ingress above.

ENGINE_LABELS = (MODEL_NAME, VERSION, REPLICA)
VLLM_RUNNING = MetricSpec("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", ENGINE_LABELS)
VLLM_WAITING = MetricSpec("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", ENGINE_LABELS)
VLLM_KV_USAGE = MetricSpec("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", ENGINE_LABELS)
VLLM_PREEMPTIONS = MetricSpec("vllm:num_preemptions_total", "counter", "Cumulative number of preemptions from the engine.", ENGINE_LABELS)
VLLM_PROMPT_TOKENS = MetricSpec("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", ENGINE_LABELS)
VLLM_GENERATION_TOKENS = MetricSpec("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", ENGINE_LABELS)
VLLM_REQUEST_SUCCESS = MetricSpec("vllm:request_success_total", "counter", "Count of finished requests, by finished reason.",
                                  ENGINE_LABELS + (FINISHED_REASON,))
VLLM_TTFT = MetricSpec("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
                       ENGINE_LABELS, LATENCY_BUCKETS)
VLLM_ITL = MetricSpec("vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
                      ENGINE_LABELS, TOKEN_LATENCY_BUCKETS)
VLLM_TPOT = MetricSpec("vllm:request_time_per_output_token_seconds", "histogram",
                       "Histogram of time_per_output_token_seconds per request.", ENGINE_LABELS, TOKEN_LATENCY_BUCKETS)
VLLM_E2E = MetricSpec("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
                      ENGINE_LABELS, LATENCY_BUCKETS)

ENGINE = (VLLM_RUNNING, VLLM_WAITING, VLLM_KV_USAGE, VLLM_PREEMPTIONS, VLLM_PROMPT_TOKENS, VLLM_GENERATION_TOKENS,
          VLLM_REQUEST_SUCCESS, VLLM_TTFT, VLLM_ITL, VLLM_TPOT, VLLM_E2E)

# ---- tenant metering (fleetserve.tenants.metering) -------------------------------------------

TENANT_REQUESTS = MetricSpec("fleetserve_tenant_requests_total", "counter", "Requests that finished, per tenant/model/outcome.", (TENANT, MODEL, OUTCOME))
TENANT_PROMPT_TOKENS = MetricSpec("fleetserve_tenant_prompt_tokens_total", "counter", "Prompt tokens processed, per tenant/model.", (TENANT, MODEL))
TENANT_COMPLETION_TOKENS = MetricSpec("fleetserve_tenant_completion_tokens_total", "counter", "Completion tokens generated, per tenant/model.", (TENANT, MODEL))
TENANT_REJECTED = MetricSpec("fleetserve_tenant_rejected_total", "counter", "Requests rejected (quota, size limits, shedding), per tenant/model/reason.", (TENANT, MODEL, REASON))

# ---- fleet admission queue (fleetserve.admission.scheduler, observed by tenants.metering) ----

FLEET_QUEUE_WAIT = MetricSpec("fleetserve_fleet_queue_wait_seconds", "histogram", "Time a request waited in the fleet admission queue.", (MODEL, PRIORITY_CLASS), QUEUE_WAIT_BUCKETS)
FLEET_SHED = MetricSpec("fleetserve_fleet_shed_total", "counter", "Requests shed by the fleet admission queue (429 queue full, 503 displaced/deadline).", (MODEL, PRIORITY_CLASS, STATUS))
FLEET_PREEMPTIONS = MetricSpec("fleetserve_fleet_preemptions_total", "counter", "Running requests preempted for a higher class.", (MODEL, PRIORITY_CLASS))

TENANT_METERING = (TENANT_REQUESTS, TENANT_PROMPT_TOKENS, TENANT_COMPLETION_TOKENS, TENANT_REJECTED,
                   FLEET_QUEUE_WAIT, FLEET_SHED, FLEET_PREEMPTIONS)

# ---- scaling controller (fleetserve.autoscaler.controller) ----------------------------------

ACTION = "action"
CAPACITY_TYPE = "capacity_type"

SERVING_REPLICAS = MetricSpec("fleetserve_serving_replicas", "gauge", "Replicas serving (active), per model/version and capacity type.", (MODEL, VERSION, CAPACITY_TYPE))
TARGET_REPLICAS = MetricSpec("fleetserve_target_replicas", "gauge", "Serving replicas the scaling policy wants now.", (MODEL, VERSION))
SCALING_ACTIONS = MetricSpec("fleetserve_scaling_actions_total", "counter", "Actions the scaling controller applied (activate, cold_start, park, drain, stop).", (MODEL, VERSION, ACTION))
SCALING_DEMAND = MetricSpec("fleetserve_scaling_demand_requests", "gauge", "Requests queued plus running that the policy saw on its last tick.", (MODEL, VERSION))

CONTROLLER = (SERVING_REPLICAS, TARGET_REPLICAS, SCALING_ACTIONS, SCALING_DEMAND)  # warm pool: the ingress's WARM_REPLICAS


# ---- rollout executor (fleetserve.canary.rollout_metrics), in the ingress's registry ----------

ROLLOUT_DECISIONS = MetricSpec("fleetserve_rollout_decisions_total", "counter", "Rollout transitions taken (load, warm, health_check, start_canary, advance, promote, rollback, block, pause, resume), per canary version.", (MODEL, VERSION, EVENT))
ROLLOUT_CANARY_WEIGHT = MetricSpec("fleetserve_rollout_canary_weight_ratio", "gauge", "Share of the model's traffic the rollout gives its canary version now (0-1).", (MODEL, VERSION))
ROLLOUT_STEP = MetricSpec("fleetserve_rollout_step", "gauge", "Canary step being held (1-based; 0 while the canary serves no traffic).", (MODEL, VERSION))
ROLLOUT_GUARDRAIL_VALUE = MetricSpec("fleetserve_rollout_guardrail_value", "gauge", "The canary's value in the last guardrail verdict, per check (error_rate, ttft_p95_s, tpot_p95_s, psi_<feature>).", (MODEL, VERSION, CHECK))
ROLLOUT_GUARDRAIL_LIMIT = MetricSpec("fleetserve_rollout_guardrail_limit", "gauge", "The limit (from stable's value and the margin) in the last guardrail verdict, per check.", (MODEL, VERSION, CHECK))

ROLLOUT = (ROLLOUT_DECISIONS, ROLLOUT_CANARY_WEIGHT, ROLLOUT_STEP, ROLLOUT_GUARDRAIL_VALUE, ROLLOUT_GUARDRAIL_LIMIT)


ALL = tuple(dict.fromkeys(INGRESS + TENANT_METERING + ENGINE + CONTROLLER + ROLLOUT))
"""Every metric fleetserve exports. The ingress and the tenant metering register theirs in
one Prometheus registry (the ingress's metrics port), the engine series in each replica's;
no two specs may share a name."""

TENANT_SERIES = tuple(s for s in ALL if TENANT in s.labels)
"""Series that carry a tenant id: private to the metrics port, dropped when a tenant is deleted."""
