"""LoRA through the native engine's two transports (step thread, engine child process):
adapters added, listed and removed between steps, and requests streamed with one."""

from __future__ import annotations

import pytest

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.process.process_engine import ProcessEngine
from fleetserve.engine.protocol import GenerateRequest, LoraRef
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import ConflictError, InvalidRequestError

PROMPT = [11, 220, 31, 4000, 17, 98, 5]


async def collect(engine, rid: str, lora=None) -> list[int]:
    req = GenerateRequest(rid, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), prompt_token_ids=PROMPT,
                          lora=lora)
    ids = []
    async for out in engine.generate(req):
        ids += out.token_ids_delta
    return ids


@pytest.mark.parametrize("transport", ["thread", "process"])
async def test_adapters_through_the_engine_front(transport, tiny_llama_path, make_adapter):
    cfg = EngineConfig(model=str(tiny_llama_path), num_kv_blocks=64, block_size=4, enable_lora=True, max_loras=2,
                       max_lora_rank=8, num_threads=1)
    engine = AsyncEngine(cfg) if transport == "thread" else ProcessEngine(cfg)
    await engine.start()
    try:
        assert engine.capabilities().supports_lora
        ref = LoraRef("base:a", str(make_adapter(tiny_llama_path, seed=1)), "r1")
        assert (await engine.add_adapter(ref))["slot"] == 0
        assert [a["name"] for a in await engine.list_adapters()] == ["base:a"]
        with_adapter, plain = await collect(engine, "x", ref), await collect(engine, "y")
        assert len(with_adapter) == 6 and with_adapter != plain
        assert await engine.remove_adapter("base:a") == 1
        assert await engine.list_adapters() == []
        # A request still carries its adapter's path: a replica that never saw the add loads it.
        assert await collect(engine, "z", ref) == with_adapter
    finally:
        await engine.shutdown()


async def test_engine_without_lora_refuses_adapters(tiny_llama_path):
    engine = AsyncEngine(EngineConfig(model=str(tiny_llama_path), num_kv_blocks=32, num_threads=1))
    await engine.start()
    try:
        assert not engine.capabilities().supports_lora
        with pytest.raises(InvalidRequestError):
            await collect(engine, "x", LoraRef("m:a", "/nonexistent", "r"))
        assert await engine.list_adapters() == []
    finally:
        await engine.shutdown()


async def test_removing_an_adapter_in_use_is_a_conflict(tiny_llama_path, make_adapter):
    cfg = EngineConfig(model=str(tiny_llama_path), num_kv_blocks=64, enable_lora=True, num_threads=1)
    engine = AsyncEngine(cfg)
    await engine.start()
    try:
        ref = LoraRef("m:a", str(make_adapter(tiny_llama_path, seed=1)), "r1")
        req = GenerateRequest("long", SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True),
                              prompt_token_ids=PROMPT, lora=ref)
        stream = engine.generate(req)
        await stream.__anext__()  # running now, adapter pinned
        with pytest.raises(ConflictError):
            await engine.remove_adapter("m:a")
        await stream.aclose()
    finally:
        await engine.shutdown()
