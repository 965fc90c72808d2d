"""End to end: the official `openai` client against fleetserve on real Ray Serve (loopback).

The app is deployed once per session (tests/fixtures/ray_serve.py); each test makes a few
requests with small max_tokens so the whole module stays cheap on 2 CPU cores. Tests taking
the ``model`` fixture run on both engines (``[native]``: tiny-llama, ``[vllm]``:
tiny-llama-vllm, the same checkpoint on vLLM) through the same ingress, router and tenancy.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def client(serve_app):
    from openai import OpenAI

    return OpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(serve_app):
    """The engine's own (transformers) tokenizer: an independent count of prompt tokens."""
    from fleetserve.engine.tokenizer import load_tokenizer

    return load_tokenizer(serve_app.checkpoint)


def test_completion_text_and_usage(client, serve_app, tokenizer, model):
    prompt = "def fibonacci(n):"
    r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    choice = r.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_chat_stream_matches_unary_and_reports_usage(client, serve_app, tokenizer, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    unary = client.chat.completions.create(model=model, messages=messages, max_tokens=10, seed=7)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=10, seed=7,
                                            stream=True, stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == unary.choices[0].message.content
    assert finish == unary.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == unary.usage.completion_tokens
    assert usage.prompt_tokens == unary.usage.prompt_tokens == len(tokenizer.apply_chat_template(messages))


def test_same_seed_same_text_and_n_uses_consecutive_seeds(client, serve_app, model):
    kw = dict(model=model, prompt="import os\n", max_tokens=8, temperature=1.0)
    a = client.completions.create(seed=11, **kw).choices[0].text
    b = client.completions.create(seed=11, **kw).choices[0].text
    assert a == b
    multi = client.completions.create(seed=11, n=3, **kw)
    assert [c.index for c in multi.choices] == [0, 1, 2]
    singles = [client.completions.create(seed=11 + i, **kw) for i in range(3)]
    assert singles[0].choices[0].text == a
    assert [c.text for c in multi.choices] == [x.choices[0].text for x in singles]
    assert multi.usage.completion_tokens == sum(x.usage.completion_tokens for x in singles)
    assert multi.usage.prompt_tokens == singles[0].usage.prompt_tokens  # a prompt counts once, as in OpenAI


def test_stop_string_truncates(client, serve_app, model):
    kw = dict(model=model, prompt="class Foo:", max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    assert len(full) > 6
    stop = full[3:6]
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_logprobs_completion_and_chat(client, serve_app, model):
    r = client.completions.create(model=model, prompt="x = ", max_tokens=3, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(t) <= 2 and v <= 0 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    assert "".join(lp.tokens) == r.choices[0].text
    c = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=3, logprobs=True, top_logprobs=2)
    assert len(c.choices[0].logprobs.content) == c.usage.completion_tokens


def test_32_concurrent_streams_equal_offline_engine(serve_app):
    """Every stream completes, and its text equals fleetserve.LLM's for the same seed."""
    from openai import AsyncOpenAI

    from fleetserve import LLM, SamplingParams

    prompts = [f"def task_{i}(x):" for i in range(32)]

    async def one(aclient, i):
        stream = await aclient.completions.create(model=serve_app.model, prompt=prompts[i], max_tokens=12,
                                                  temperature=0.8, seed=100 + i, stream=True)
        text, finish = [], None
        async for chunk in stream:
            text.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish

    async def run_all():
        aclient = AsyncOpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0, timeout=300)
        async with aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(32)))

    served = asyncio.run(run_all())
    assert all(finish in ("stop", "length") for _, finish in served)
    engine_args = serve_app.config.models[0].engine_args
    llm = LLM(serve_app.checkpoint, **engine_args)
    offline = llm.generate(prompts, [SamplingParams(max_tokens=12, temperature=0.8, seed=100 + i) for i in range(32)])
    assert [t for t, _ in served] == [o.outputs[0].text for o in offline]


def _post(serve_app, path, body=None, *, key="default", raw=None, headers=None):
    h = dict(headers or {})
    k = serve_app.api_key if key == "default" else key
    if k is not None:
        h["Authorization"] = f"Bearer {k}"
    if raw is not None:
        return httpx.post(serve_app.base_url + path, content=raw, headers={**h, "Content-Type": "application/json"}, timeout=60)
    return httpx.post(serve_app.base_url + path, json=body, headers=h, timeout=60)


MALFORMED = [
    ("bad json", dict(raw=b'{"model": '), 400, None),
    ("not an object", dict(raw=b"[1, 2]"), 400, None),
    ("unknown field", dict(body={"model": "M", "prompt": "x", "best_of": 2}), 400, "best_of"),
    ("wrong type", dict(body={"model": "M", "prompt": "x", "max_tokens": "ten"}), 400, "max_tokens"),
    ("temperature range", dict(body={"model": "M", "prompt": "x", "temperature": 3}), 400, "temperature"),
    ("top_p zero", dict(body={"model": "M", "prompt": "x", "top_p": 0}), 400, "top_p"),
    ("n too big", dict(body={"model": "M", "prompt": "x", "n": 1000}), 400, "n"),
    ("negative seed", dict(body={"model": "M", "prompt": "x", "seed": -1}), 400, "seed"),
    ("logprobs too many", dict(body={"model": "M", "prompt": "x", "logprobs": 99}), 400, "logprobs"),
    ("missing prompt", dict(body={"model": "M"}), 400, "prompt"),
    ("empty prompt list", dict(body={"model": "M", "prompt": []}), 400, "prompt"),
    ("stream_options without stream", dict(body={"model": "M", "prompt": "x", "stream_options": {"include_usage": True}}), 400, None),
    ("unknown model", dict(body={"model": "no-such-model", "prompt": "x"}), 404, "model"),
    ("context too long", dict(body={"model": "M", "prompt": "hello " * 3000, "max_tokens": 4}), 400, "prompt"),
    ("max_tokens past context", dict(body={"model": "M", "prompt": "x", "max_tokens": 100000}), 400, "max_tokens"),
    ("missing key", dict(body={"model": "M", "prompt": "x"}, key=None), 401, None),
    ("wrong key", dict(body={"model": "M", "prompt": "x"}, key="fs-wrong-key-000000000000"), 401, None),
    ("model not allowed", dict(body={"model": "M", "prompt": "x"}, key="OTHER"), 403, "model"),
    ("body too large", dict(body={"model": "M", "prompt": "x" * (2 << 20)}), 413, None),
]


@pytest.mark.parametrize("name, req, status, param", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_the_right_4xx(serve_app, model, name, req, status, param):
    req = dict(req)
    if "body" in req:
        req["body"] = {k: (model if v == "M" else v) for k, v in req["body"].items()}
    if req.get("key") == "OTHER":
        req["key"] = serve_app.api_key + "-other"
    r = _post(serve_app, "/v1/completions", req.pop("body", None), **req)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param


def test_malformed_chat_requests(serve_app, model):
    bad = [
        {"model": model, "messages": []},
        {"model": model, "messages": [{"role": "wizard", "content": "x"}]},
        {"model": model, "messages": [{"role": "user"}]},
        {"model": model, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        {"model": model, "messages": "hello"},
    ]
    for body in bad:
        r = _post(serve_app, "/v1/chat/completions", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] is None or r.json()["error"]["param"].startswith(("messages", "top_logprobs"))


def test_models_health_openapi_metrics_admin(serve_app):
    base, auth = serve_app.base_url, {"Authorization": f"Bearer {serve_app.api_key}"}
    models = httpx.get(base + "/v1/models", headers=auth).json()
    assert [m["id"] for m in models["data"]] == [m.name for m in serve_app.config.models]
    assert httpx.get(base + "/v1/models").status_code == 401
    assert httpx.get(base + "/health").json()["status"] == "ok"
    spec = httpx.get(base + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(spec["paths"])
    from tests.fixtures.metrics_scrape import listeners, scrape

    public = httpx.get(base + "/metrics")  # tenant series never on the REST port
    assert public.status_code == 404 and "tenant" not in public.text and "test" not in public.text
    found = listeners(base, serve_app.admin_key)
    metrics = scrape(found.ingress, serve_app.admin_key)
    assert 'fleetserve_requests_total{model="tiny-llama",status="200",tenant="test",version="v1"}' in metrics
    assert "fleetserve_time_to_first_token_seconds_bucket" in metrics
    assert httpx.get(f"http://{found.ingress}/metrics").status_code == 401
    assert httpx.get(f"http://{found.ingress}/metrics", headers=auth).status_code == 401  # a tenant key is not enough
    assert len(found.replicas) == len(serve_app.config.models)  # one replica per model
    engine_series = "".join(scrape(replica, serve_app.admin_key) for replica in found.replicas)
    for m in serve_app.config.models:
        assert f'vllm:kv_cache_usage_perc{{model_name="{m.name}"' in engine_series \
            or f'vllm:kv_cache_usage_perc{{engine="0",model_name="{m.name}"' in engine_series
    assert all(httpx.get(f"http://{replica}/metrics").status_code == 401 for replica in found.replicas)
    assert httpx.get(base + "/admin/status").status_code == 401
    assert httpx.get(base + "/admin/status", headers=auth).status_code == 403
    status = httpx.get(base + "/admin/status", headers={"Authorization": f"Bearer {serve_app.admin_key}"}).json()
    (model,) = [m for m in status["models"] if m["name"] == serve_app.model]
    assert model["num_replicas"] == 1
    row = model["replicas"][0]
    assert {"waiting", "running", "kv_usage", "healthy"} <= set(row) and row["healthy"]
    # server.replica_transport defaults to direct: the requests above streamed over the link.
    assert row["transport"] == "link" and row["link_streams"] >= 1


def test_sse_wire_format(serve_app, model):
    """Raw SSE framing: `data: {...}\\n\\n` events and a final `data: [DONE]`."""
    with httpx.stream("POST", serve_app.openai_base + "/completions", timeout=60,
                      headers={"Authorization": f"Bearer {serve_app.api_key}"},
                      json={"model": model, "prompt": "a", "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "text_completion"



def test_named_tool_call_through_serve_streams_like_unary(client, serve_app, model):
    """Issue 24, item 2, through the Serve proxy: the constraint holds, and streamed tool-call
    deltas concatenate to the unary call for the same seed."""
    params = {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}},
              "required": ["hour"], "additionalProperties": False}
    kw = dict(model=model, messages=[{"role": "user", "content": "wake me"}], seed=4, max_tokens=40,
              tools=[{"type": "function", "function": {"name": "set_alarm", "parameters": params}}],
              tool_choice={"type": "function", "function": {"name": "set_alarm"}}, metadata={"app": "e2e"})
    unary = client.chat.completions.create(**kw).choices[0]
    (call,) = unary.message.tool_calls
    assert unary.finish_reason == "tool_calls" and 0 <= json.loads(call.function.arguments)["hour"] <= 23
    name, args = "", ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                name += d.function.name or ""
                args += d.function.arguments or ""
    assert (name, args) == ("set_alarm", call.function.arguments)
