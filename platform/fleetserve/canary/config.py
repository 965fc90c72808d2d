"""The ``canary`` section of the top-level config: how a new model version is rolled out.

A pure schema (any module may import it). Steps are canary traffic percentages; each is held
for ``step_interval_s`` and until each arm has served ``min_sample_per_step`` requests in
the step's window, then guardrails compare canary against stable before the next step.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetserve.canary.ab_config import ABConfig, DriftMonitorConfig, FeedbackConfig, PredictionLogConfig


KNOWN_FEATURES = ("prompt_length", "output_length", "first_token")  # fleetserve.canary.drift's names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GuardrailConfig(_Strict):
    """How much worse than stable the canary may be over a step's window before it is rolled back."""

    error_rate_margin: float = Field(
        0.01, ge=0, le=1,
        description="Largest allowed excess of the canary's error rate (5xx + engine errors, per request) over "
        "stable's, in absolute terms: 0.01 = one percentage point.",
    )
    ttft_p95_margin: float = Field(
        0.2, ge=0,
        description="Largest allowed relative excess of the canary's p95 time to first token over stable's "
        "(0.2: canary p95 may be up to 1.2x stable's).",
    )
    tpot_p95_margin: float = Field(
        0.2, ge=0,
        description="Largest allowed relative excess of the canary's p95 time per output token over stable's.",
    )


class DriftConfig(_Strict):
    """Optional guardrail on distribution drift (PSI) between the arms' prompts and outputs."""

    enabled: bool = Field(False, description="Roll back when any feature's PSI exceeds psi_threshold.")
    psi_threshold: float = Field(
        0.2, gt=0, description="PSI above which a feature counts as drifted (0.1-0.2 moderate, > 0.2 significant)."
    )
    features: tuple[str, ...] = Field(
        KNOWN_FEATURES,
        description="Features compared (histograms over shared bins, see fleetserve.canary.drift).",
    )

    @field_validator("features")
    @classmethod
    def _features(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"features must not repeat a name, got {list(v)}")
        unknown = sorted(set(v) - set(KNOWN_FEATURES))
        if unknown:
            raise ValueError(f"features must be among {list(KNOWN_FEATURES)}, got unknown {unknown}")
        return v


class CanaryConfig(_Strict):
    """Guarded canary rollouts of new model versions (the ``canary`` section)."""

    enabled: bool = Field(
        False,
        description="Run the rollout executor in the ingress: it steps a started rollout's split, runs the "
        "guardrails and rolls back on a breach (docs/rollouts.md). Off: model versions and a manually set split "
        "still work through the admin API, and the rollout endpoints answer 409.",
    )
    steps: tuple[float, ...] = Field(
        (1.0, 5.0, 25.0, 50.0, 100.0),
        description="Canary traffic percentages, strictly increasing, in (0, 100], ending at 100; the version is "
        "promoted after the last step passes.",
    )
    step_interval_s: float = Field(600.0, gt=0, description="Shortest time each step is held before it may advance.")
    min_sample_per_step: int = Field(
        500, ge=1,
        description="Requests each arm must have served in the step's window before any verdict (advance or "
        "rollback) is taken.",
    )
    warmup_requests: int = Field(
        16, ge=0, description="Warm-up requests the canary must complete before its health check (0: no warm-up)."
    )
    load_timeout_s: float = Field(1800.0, gt=0, description="Longest a canary may take to load before it is blocked.")
    warmup_timeout_s: float = Field(600.0, gt=0, description="Longest warm-up may take before the canary is blocked.")
    health_check_timeout_s: float = Field(
        120.0, gt=0, description="Longest the health check may stay unanswered before the canary is blocked."
    )
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig, description="Canary-vs-stable margins.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Optional PSI drift guardrail.")
    registry_refresh_s: float = Field(
        2.0, gt=0,
        description="How often each ingress replica re-reads a model's split weights and versions from the version "
        "registry (the request path reads only its cached copy).",
    )
    redis_url: Optional[str] = Field(
        None,
        description="Redis URL of the version registry (shared by every ingress replica); null: tenants.redis_url when "
        "set, else an in-process store (one ingress replica only).",
    )
    tick_s: float = Field(
        2.0, gt=0,
        description="How often the rollout executor observes each live rollout (the per-version request "
        "counters every ingress replica adds to as requests finish) and applies the policy's decision.",
    )
    lease_s: float = Field(
        10.0, gt=0,
        description="Lease of the one ingress replica that runs the executor; when that replica dies another (or "
        "its restarted self) takes over after at most this long and resumes from the stored state.",
    )
    retire_delay_s: float = Field(
        10.0, gt=0,
        description="How long a version that lost its traffic (rolled back, blocked, or replaced by a promotion) "
        "keeps its deployment before it is deleted, so every ingress replica has re-read the split first; Serve "
        "then drains its in-flight requests.",
    )
    warmup_attempts_factor: int = Field(
        3, ge=1,
        description="Warm-up gives up (the version is blocked) after warmup_requests x this many synthetic "
        "requests without warmup_requests successes; the health check tries this many requests for one success.",
    )
    pin_header: str = Field(
        "x-fleetserve-version",
        description="Request header that pins a version (honoured only for admin keys and tenants flagged for it).",
    )
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="POST /v1/feedback: how long ids are kept.")
    ab: ABConfig = Field(default_factory=ABConfig, description="A/B report defaults: alpha, power, minimum detectable effect.")
    prediction_log: PredictionLogConfig = Field(
        default_factory=PredictionLogConfig, description="Sampled per-variant log of prompts and outputs (off by default)."
    )
    drift_monitor: DriftMonitorConfig = Field(
        default_factory=DriftMonitorConfig,
        description="Online PSI per version against a baseline window, exported as fleetserve_drift_psi.",
    )

    @model_validator(mode="after")
    def _retire_after_refresh(self) -> "CanaryConfig":
        if self.retire_delay_s <= self.registry_refresh_s:
            raise ValueError(f"retire_delay_s ({self.retire_delay_s:g}) must exceed registry_refresh_s "
                             f"({self.registry_refresh_s:g}): a version's deployment may only go once every ingress "
                             "replica has stopped sending it requests")
        if self.lease_s <= self.tick_s:
            raise ValueError(f"lease_s ({self.lease_s:g}) must exceed tick_s ({self.tick_s:g}), or the executor's "
                             "lease lapses between its own ticks")
        return self

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("steps must list at least one percentage")
        if any(not 0 < s <= 100 for s in v):
            raise ValueError(f"steps must be percentages in (0, 100], got {list(v)}")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"steps must be strictly increasing, got {list(v)}")
        if v[-1] != 100:
            raise ValueError(f"steps must end at 100 (the version is promoted after it), got {list(v)}")
        return v

    @field_validator("pin_header")
    @classmethod
    def _pin_header(cls, v: str) -> str:
        if not v or not v.isascii() or any(c.isspace() or c == ":" for c in v):
            raise ValueError(f"pin_header must be an HTTP header name, got {v!r}")
        return v.lower()
