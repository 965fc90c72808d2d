"""The canary config section: defaults, and errors that name the field."""

import pytest
from pydantic import ValidationError

from fleetserve.canary.config import CanaryConfig
from fleetserve.config import parse_config
from fleetserve.errors import ConfigError


def fleet(canary: dict) -> dict:
    return {"models": [{"name": "m", "checkpoint": "/x"}], "canary": canary}


def test_defaults_are_the_issue_s_rollout():
    c = CanaryConfig()
    assert (c.enabled, c.steps, c.drift.enabled, c.drift.psi_threshold) == (False, (1, 5, 25, 50, 100), False, 0.2)
    assert all(f.description for f in CanaryConfig.model_fields.values())
    assert all(f.description for f in type(c.guardrails).model_fields.values())
    assert all(f.description for f in type(c.drift).model_fields.values())


@pytest.mark.parametrize("section, field, words", [
    ({"steps": [10, 5, 100]}, "canary.steps", "strictly increasing"),
    ({"steps": [10, 50]}, "canary.steps", "end at 100"),
    ({"steps": [0, 100]}, "canary.steps", "(0, 100]"),
    ({"steps": []}, "canary.steps", "at least one"),
    ({"step_interval_s": 0}, "canary.step_interval_s", "greater than 0"),
    ({"min_sample_per_step": 0}, "canary.min_sample_per_step", "greater than or equal to 1"),
    ({"guardrails": {"error_rate_margin": -0.1}}, "canary.guardrails.error_rate_margin", "greater than or equal"),
    ({"guardrails": {"p99": 1}}, "canary.guardrails.p99", "Extra inputs"),
    ({"drift": {"psi_threshold": 0}}, "canary.drift.psi_threshold", "greater than 0"),
    ({"drift": {"features": ["prompt_length", "prompt_length"]}}, "canary.drift.features", "repeat"),
    ({"drift": {"features": ["latency"]}}, "canary.drift.features", "unknown ['latency']"),
    ({"pin_header": "x version"}, "canary.pin_header", "header name"),
    ({"retire_delay_s": 1, "registry_refresh_s": 2}, "canary", "must exceed registry_refresh_s"),
    ({"lease_s": 1, "tick_s": 2}, "canary", "must exceed tick_s"),
])
def test_errors_name_the_field(section, field, words):
    with pytest.raises(ConfigError) as ei:
        parse_config(fleet(section))
    assert ei.value.field == field and words in str(ei.value)


def test_a_full_section_parses_and_round_trips():
    section = {"steps": [10, 100], "step_interval_s": 30, "min_sample_per_step": 50, "warmup_requests": 0,
               "guardrails": {"ttft_p95_margin": 0.5}, "drift": {"enabled": True, "features": ["first_token"]},
               "pin_header": "X-Model-Version"}
    c = parse_config(fleet(section)).canary
    assert c.steps == (10, 100) and c.guardrails.ttft_p95_margin == 0.5 and c.pin_header == "x-model-version"
    assert CanaryConfig.model_validate(c.model_dump(mode="json")) == c
    with pytest.raises(ValidationError):
        CanaryConfig(unknown=1)
