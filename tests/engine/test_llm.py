"""Offline LLM API smoke test on the real tiny Llama checkpoint."""

import pytest

from fleetserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_path):
    return LLM(model=str(tiny_llama_path), num_kv_blocks=64, max_num_seqs=8)


def test_generate_text_and_token_prompts(llm):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = llm.generate(["def main():", "import sys"], params)
    assert len(outs) == 2
    for o in outs:
        c = o.outputs[0]
        assert len(c.token_ids) == 6 and c.finish_reason == "length"
        assert c.text == llm.get_tokenizer().decode(c.token_ids)
        assert o.prompt_token_ids == llm.get_tokenizer().encode(o.prompt)
    # The same prompt as token ids gives the same greedy completion (prefix cache or not).
    again = llm.generate({"prompt_token_ids": outs[0].prompt_token_ids}, params)
    assert again[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_n_seeded_completions_and_chat(llm):
    params = SamplingParams(temperature=1.0, seed=7, n=2, max_tokens=8, ignore_eos=True)
    a = llm.generate("hello", params)[0]
    b = llm.generate("hello", params)[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    assert a.outputs[0].token_ids != a.outputs[1].token_ids
    chat = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=4))
    assert chat[0].prompt.endswith("<|assistant|>\n")
    assert 1 <= len(chat[0].outputs[0].token_ids) <= 4
    st = llm.engine.stats()
    assert st.kv_blocks_used == 0 and st.num_finished >= 7


def test_seeded_request_is_independent_of_its_batch(llm):
    p = SamplingParams(temperature=0.9, top_p=0.95, seed=123, max_tokens=20, ignore_eos=True)
    alone = llm.generate(["def seeded(x):"], p)[0].outputs[0].token_ids
    others = [f"import mod{i}\nclass X{i}:" for i in range(5)]
    params = [SamplingParams(temperature=1.0, max_tokens=20)] * 2 + [p] + [SamplingParams(temperature=0, max_tokens=12)] * 3
    mixed = llm.generate(others[:2] + ["def seeded(x):"] + others[2:], params)
    assert mixed[2].outputs[0].token_ids == alone
