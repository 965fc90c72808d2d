"""Acceptance for LoRA in the native engine.

- greedy output with an adapter equals PEFT's merged weights through transformers' ``generate``
  (MHA and GQA checkpoints, all seven target modules, rsLoRA and a partial target set);
- a batch mixing 4 adapters and the base model gives every request the tokens it gets alone;
- the prefix cache never hands one adapter's KV to another (or to the base model);
- the slots are an LRU: eviction of unpinned adapters, a 503 when every slot is pinned.
"""

from __future__ import annotations

import random

import pytest

from fleetserve.engine.llm import LLM
from fleetserve.engine.protocol import LoraRef
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import ConfigError, ServiceUnavailableError
from tests.fixtures.adapters import peft_merged_greedy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_TOKENS = 8


def prompts(n: int, seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 6000) for _ in range(rng.randint(3, 40))] for _ in range(n)]


def ref(path, name: str) -> LoraRef:
    return LoraRef(name=name, path=str(path), revision="r1")


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def make_llm(path, **overrides) -> LLM:
    kw = dict(block_size=4, num_kv_blocks=256, max_num_seqs=16, max_num_batched_tokens=128, enable_lora=True,
              max_loras=4, max_lora_rank=8)
    return LLM(str(path), **{**kw, **overrides})


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


ADAPTER_KINDS = {
    "all-targets": dict(seed=1),
    "rslora-r8": dict(seed=2, rank=8, alpha=16, use_rslora=True),
    "attention-only": dict(seed=3, targets=("q_proj", "v_proj")),
}


@pytest.mark.parametrize("kind", sorted(ADAPTER_KINDS))
@pytest.mark.parametrize("checkpoint", ["tiny_llama_path", "tiny_llama_gqa_path"])
def test_greedy_with_adapter_equals_peft_merged_generate(checkpoint, kind, request, make_adapter):
    base = request.getfixturevalue(checkpoint)
    adapter = make_adapter(base, **ADAPTER_KINDS[kind])
    ps = prompts(6)
    expected = peft_merged_greedy(base, adapter, ps, MAX_TOKENS)
    llm = make_llm(base)
    got = tokens(llm.generate(ps, greedy(), lora_request=ref(adapter, "a")))
    assert got == expected
    plain = tokens(llm.generate(ps, greedy()))
    assert plain != got, "the adapter must change the output, or this test proves nothing"


def test_mixed_batch_of_four_adapters_and_base_equals_each_alone(tiny_llama_gqa_path, make_adapter):
    base = tiny_llama_gqa_path
    refs = [ref(make_adapter(base, seed=10 + i, rank=2 + 2 * i), f"a{i}") for i in range(4)]
    ps = prompts(15, seed=5)
    loras = [None if i % 5 == 4 else refs[i % 5] for i in range(len(ps))]
    llm = make_llm(base)
    mixed = tokens(llm.generate(ps, greedy(), lora_request=loras))
    assert llm.engine.lora.loads == 4
    alone = [tokens(make_llm(base).generate([p], greedy(), lora_request=lo))[0] for p, lo in zip(ps, loras)]
    assert mixed == alone
    # Each adapter really differs from the base model on the same prompt.
    for i in range(4):
        assert tokens(llm.generate([ps[i]], greedy()))[0] != mixed[i]


def test_prefix_cache_is_keyed_by_adapter(tiny_llama_path, make_adapter):
    a, b = ref(make_adapter(tiny_llama_path, seed=1), "a"), ref(make_adapter(tiny_llama_path, seed=2), "b")
    prompt = prompts(1, seed=9)[0] * 2  # 2+ full blocks
    llm = make_llm(tiny_llama_path)
    first = llm.generate([prompt], greedy(), lora_request=a)[0]
    again = llm.generate([prompt], greedy(), lora_request=a)[0]
    assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == first.outputs[0].token_ids
    other = llm.generate([prompt], greedy(), lora_request=b)[0]
    base = llm.generate([prompt], greedy())[0]
    assert other.num_cached_tokens == 0 and base.num_cached_tokens == 0
    fresh = make_llm(tiny_llama_path)
    assert other.outputs[0].token_ids == fresh.generate([prompt], greedy(), lora_request=b)[0].outputs[0].token_ids
    assert base.outputs[0].token_ids == fresh.generate([prompt], greedy())[0].outputs[0].token_ids
    # A new revision of the same adapter name does not reuse the old revision's blocks.
    a2 = LoraRef(name="a", path=a.path, revision="r2")
    assert llm.generate([prompt], greedy(), lora_request=a2)[0].num_cached_tokens == 0


def test_slots_are_an_lru_and_busy_slots_refuse(tiny_llama_path, make_adapter):
    refs = [ref(make_adapter(tiny_llama_path, seed=20 + i), f"x{i}") for i in range(3)]
    llm = make_llm(tiny_llama_path, max_loras=2)
    eng = llm.engine
    llm.generate(prompts(1), greedy(), lora_request=refs[0])
    llm.generate(prompts(1), greedy(), lora_request=refs[1])
    llm.generate(prompts(1), greedy(), lora_request=refs[0])  # x0 is now the most recent
    llm.generate(prompts(1), greedy(), lora_request=refs[2])  # evicts x1
    assert sorted(a["name"] for a in eng.list_adapters()) == ["x0", "x2"]
    assert eng.lora.loads == 3
    # Both slots pinned by unfinished requests: a third adapter is refused (retryable).
    from fleetserve.engine.protocol import GenerateRequest

    for i, r in enumerate(refs[:2]):
        eng.add_request(GenerateRequest(f"pin{i}", greedy(), prompt_token_ids=[5, 6, 7], lora=r))
    with pytest.raises(ServiceUnavailableError):
        eng.add_request(GenerateRequest("third", greedy(), prompt_token_ids=[5, 6, 7], lora=refs[2]))
    assert "third" not in eng.scheduler.requests and "third" not in eng._detok  # refused: nothing left behind
    for i in range(2):
        eng.abort(f"pin{i}")
    assert all(a["active_requests"] == 0 for a in eng.list_adapters())
    eng.add_request(GenerateRequest("third", greedy(), prompt_token_ids=[5, 6, 7], lora=refs[2]))
    eng.abort("third")
    eng.kv.check_invariants(list(eng.scheduler.requests))


def test_adapter_that_does_not_fit_is_refused(tiny_llama_path, tiny_llama_gqa_path, make_adapter):
    llm = make_llm(tiny_llama_path, max_lora_rank=4)
    with pytest.raises(ConfigError, match="max_lora_rank"):
        llm.engine.add_adapter(ref(make_adapter(tiny_llama_path, seed=1, rank=8, alpha=16), "big"))
    with pytest.raises(ConfigError, match="shapes"):  # an adapter made for another base model
        llm.engine.add_adapter(ref(make_adapter(tiny_llama_gqa_path, seed=1), "gqa"))
    assert llm.engine.list_adapters() == []
