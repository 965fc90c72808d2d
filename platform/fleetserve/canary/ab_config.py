"""The A/B parts of the ``canary`` section: feedback retention, the report's test settings,
and the sampled prediction logger. A pure schema (any module may import it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedbackConfig(_Strict):
    """How long a response id can still receive feedback (``POST /v1/feedback``)."""

    retention_s: float = Field(
        86400.0, gt=0, le=30 * 86400,
        description="Seconds the platform remembers which tenant, model and version served a response id; feedback "
        "for an older id is a 404.",
    )
    max_records_in_memory: int = Field(
        10_000, ge=1,
        description="Bound on remembered response ids in the in-process store (no Redis; ~0.35 KB each); the oldest "
        "are dropped first, so feedback for an id older than the last this many responses is a 404. With Redis, "
        "ids are kept for retention_s.",
    )


class ABConfig(_Strict):
    """Defaults of the A/B report (``GET /admin/ab/{model}``, ``fleetserve ab report``); each can be overridden per call."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the two-sided two-proportion z-test.")
    power: float = Field(0.8, gt=0, lt=1, description="Power (1 - beta) the sample size is computed for.")
    mde: float = Field(
        0.02, gt=0, lt=1,
        description="Minimum detectable effect: the absolute change of the positive-feedback rate the experiment must "
        "be able to detect (0.02 = two percentage points).",
    )
    baseline_rate: float = Field(
        0.5, gt=0, lt=1,
        description="Positive-feedback rate assumed for the sample size until the control arm has feedback of its own.",
    )


class PredictionLogConfig(_Strict):
    """A sampled log of requests and their outputs per variant, for offline comparison. Off by default.

    Requests of tenants flagged ``prediction_log_opt_out`` are never logged (neither prompt nor output).
    """

    enabled: bool = Field(False, description="Log a sample of requests with their prompts and outputs.")
    sample_rate: float = Field(0.01, ge=0, le=1, description="Fraction of requests logged, per variant unless overridden.")
    version_rates: dict[str, float] = Field(
        default_factory=dict,
        description="Version id -> its own sample rate (e.g. log 10% of the canary and 1% of stable).",
    )
    sink: Literal["jsonl", "redis_stream"] = Field(
        "jsonl", description="Where records go: JSON lines files, or a Redis stream (canary.redis_url or tenants.redis_url)."
    )
    directory: str = Field(
        "/tmp/fleetserve-predictions",
        description="jsonl sink: directory of the files, one per model and version (<model>@<version>.jsonl).",
    )
    stream_key: str = Field("fleetserve:predictions", min_length=1, description="redis_stream sink: the stream's key.")
    stream_maxlen: int = Field(100_000, ge=1, description="redis_stream sink: approximate cap on the stream's length.")

    @field_validator("version_rates")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r <= 1}
        if bad:
            raise ValueError(f"version_rates must be in [0, 1], got {bad}")
        return v

    def rate_for(self, version: str) -> float:
        return self.version_rates.get(version, self.sample_rate) if self.enabled else 0.0


class DriftMonitorConfig(_Strict):
    """Online PSI of each version's recent requests against the model's baseline window (a gauge per version)."""

    enabled: bool = Field(True, description="Track prompt-length, output-length and first-token distributions per version.")
    baseline_size: int = Field(
        500, ge=10,
        description="Requests of the stable version that form the baseline window (the first ones seen after start or "
        "a baseline reset); bins are fixed from it.",
    )
    window_size: int = Field(1000, ge=10, description="Most recent requests per version compared against the baseline.")
    min_samples: int = Field(100, ge=1, description="Requests a version needs in its window before its PSI is exported.")
    refresh_every: int = Field(50, ge=1, description="Recompute a version's PSI gauge after this many new requests.")

    @model_validator(mode="after")
    def _sizes(self) -> "DriftMonitorConfig":
        if self.min_samples > self.window_size:
            raise ValueError(f"min_samples ({self.min_samples}) must not exceed window_size ({self.window_size})")
        return self


