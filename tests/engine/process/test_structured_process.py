"""Structured outputs through ProcessEngine: the spec crosses the typed pipe inside
SamplingParams and is compiled in the child; a spec the child cannot compile is a 400."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.process.process_engine import ProcessEngine
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams, StructuredOutput
from fleetserve.errors import InvalidRequestError

TIMEOUT = 120  # the child imports torch and loads the model on a shared 2-core box
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                           "maximum": 99}},
          "required": ["ok", "n"]}


async def collect(engine, request) -> tuple[str, str]:
    text, reason = "", None
    async for out in engine.generate(request):
        text += out.text_delta
        reason = out.finish_reason
    return text, reason


async def test_schema_compiled_in_the_child_and_bad_spec_is_invalid_request(tiny_llama_path):
    engine = ProcessEngine(EngineConfig(model=str(tiny_llama_path), max_model_len=512, num_kv_blocks=128))
    await asyncio.wait_for(engine.start(), TIMEOUT)
    try:
        params = SamplingParams(temperature=1.0, seed=3, max_tokens=100, structured=StructuredOutput.json_schema(SCHEMA))
        text, reason = await asyncio.wait_for(collect(engine, GenerateRequest("p1", params, prompt="JSON:")), TIMEOUT)
        assert reason == "stop"
        assert set(json.loads(text)) == {"ok", "n"}
        bad = SamplingParams(structured=StructuredOutput("json_schema", '{"type": "strin"}'))
        with pytest.raises(InvalidRequestError, match="strin"):
            await asyncio.wait_for(collect(engine, GenerateRequest("p2", bad, prompt="JSON:")), TIMEOUT)
    finally:
        await engine.shutdown()
