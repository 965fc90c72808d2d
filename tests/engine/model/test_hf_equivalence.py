"""Acceptance: fleetserve's greedy output token ids equal transformers' greedy ``generate``.

For llama (MHA and GQA), qwen2 and mistral tiny checkpoints, over 18 prompts of mixed
lengths (some sharing prefixes), in three engine set-ups: prefix caching on with a roomy
pool, and a pool small enough to force preemptions in ``recompute`` and in ``swap`` mode.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams

CHECKPOINTS = ("tiny_llama_path", "tiny_llama_gqa_path", "tiny_qwen2_path", "tiny_mistral_path")
BLOCK_SIZE = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/fixtures/checkpoints.py


def make_prompts() -> tuple[list[list[int]], list[int]]:
    rng = random.Random(7)

    def ids(n):
        return [rng.randrange(10, 6000) for _ in range(n)]

    shared_a, shared_b = ids(21), ids(9)
    prompts = [ids(rng.randint(2, 50)) for _ in range(12)]
    prompts += [shared_a + ids(k) for k in (0, 3, 11)]  # a prompt that is exactly the prefix, too
    prompts += [shared_b + ids(k) for k in (1, 6)]
    prompts += [shared_a + ids(3)]  # admitted after its siblings' blocks are cached
    max_tokens = [rng.randint(4, 16) for _ in prompts]
    return prompts, max_tokens


PROMPTS, MAX_TOKENS = make_prompts()


@functools.lru_cache(maxsize=None)
def hf_greedy(path) -> tuple[tuple[int, ...], ...]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # ignore_eos, as the engine is asked to
    outs = []
    with torch.inference_mode():
        for prompt, n in zip(PROMPTS, MAX_TOKENS):
            out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0)
            outs.append(tuple(out[0, len(prompt) :].tolist()))
    return tuple(outs)


SETUPS = {
    "prefix_cache": dict(num_kv_blocks=256, enable_prefix_caching=True),
    "recompute": dict(num_kv_blocks=40, enable_prefix_caching=True, preemption_mode="recompute"),
    "swap": dict(num_kv_blocks=40, enable_prefix_caching=False, preemption_mode="swap"),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_greedy_matches_transformers(checkpoint, setup, request):
    path = request.getfixturevalue(checkpoint)
    expected = hf_greedy(path)
    assert [len(e) for e in expected] == MAX_TOKENS

    llm = LLM(str(path), block_size=BLOCK_SIZE, max_num_seqs=16, max_num_batched_tokens=64, **SETUPS[setup])
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS]
    outputs = llm.generate(PROMPTS, params)

    got = [tuple(o.outputs[0].token_ids) for o in outputs]
    mismatched = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not mismatched, f"prompts {mismatched} differ from transformers"
    stats = llm.engine.stats()
    if setup == "prefix_cache":
        assert stats.prefix_cache_hits > 0
    else:
        assert stats.num_preemptions > 0
    assert stats.kv_blocks_used == 0  # every block released (cached blocks count as free)
