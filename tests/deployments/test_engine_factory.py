"""Which engine a replica hosts for a model config (construction only; nothing starts)."""

import pytest

from fleetserve.config import ModelConfig
from fleetserve.deployments.engine_factory import build_engine
from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.process.process_engine import ProcessEngine


@pytest.mark.parametrize("engine_args, expected", [
    ({}, ProcessEngine),  # default: the step loop in a child process of the replica
    ({"engine_process": True}, ProcessEngine),
    ({"engine_process": False}, AsyncEngine),
])
def test_native_engine_runs_where_the_config_says(engine_args, expected, tiny_llama_path):
    model = ModelConfig.model_validate({"name": "m", "checkpoint": str(tiny_llama_path), "engine_args": engine_args})
    engine = build_engine(model)
    assert type(engine) is expected
    assert engine.config.num_kv_blocks is None and engine.config.model == str(tiny_llama_path)
