"""Shared builders for canary tests; each takes ``**overrides``."""

from __future__ import annotations

from fleetserve.canary.config import CanaryConfig, GuardrailConfig
from fleetserve.canary.snapshot import ArmWindow, CanaryHealth, RolloutSnapshot
from fleetserve.canary.versions import ModelVersion


def make_version(version_id: str = "v1", **overrides) -> ModelVersion:
    fields = dict(model="m", version_id=version_id, checkpoint=f"/ckpt/{version_id}",
                  checksum=f"sha256:{version_id:0>64}", files={"model.safetensors": "ab"})
    fields.update(overrides)
    return ModelVersion(**fields)


def make_config(**overrides) -> CanaryConfig:
    fields = dict(steps=[1, 5, 25, 50, 100], step_interval_s=60, min_sample_per_step=100,
                  warmup_requests=4, load_timeout_s=300, warmup_timeout_s=120, health_check_timeout_s=30)
    fields.update(overrides)
    return CanaryConfig(**fields)


def guardrails(**overrides) -> GuardrailConfig:
    return GuardrailConfig(**overrides)


def arm(requests: int = 1000, errors: int = 0, ttft: float = 0.2, tpot: float = 0.02, **overrides) -> ArmWindow:
    fields = dict(requests=requests, errors=errors, ttft_p95_s=ttft, tpot_p95_s=tpot)
    fields.update(overrides)
    return ArmWindow(**fields)


def make_snapshot(**overrides) -> RolloutSnapshot:
    fields = dict(health=CanaryHealth(loaded=True, checksum_ok=True, warmup_completed=4, healthy=True),
                  stable=arm(), canary=arm())
    fields.update(overrides)
    return RolloutSnapshot(**fields)
