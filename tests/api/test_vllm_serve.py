"""The vLLM backend through Ray Serve: what docs/vllm.md says about cancellation, priority and
gRPC, checked on the session app's vLLM model (``tiny-llama-vllm``, the tiny checkpoint on
``engine: vllm``; tests/fixtures/ray_serve.py) through the same ingress, router and tenancy
as the native engine. The REST parity tests (openai client) are parametrized over both
engines in test_openai_e2e.py, test_structured_outputs.py and test_tool_calls.py."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import openai
import pytest

from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.grpc import inference_pb2_grpc as pbg
from tests.fixtures.metrics_scrape import metric_sum, scrape
from tests.fixtures.ray_serve import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def _admin(app, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, app.base_url + path, headers={"Authorization": f"Bearer {app.admin_key}"},
                         timeout=60, **kw)


def vllm_row(app, model: str) -> dict:
    (m,) = [m for m in _admin(app, "GET", "/admin/status").json()["models"] if m["name"] == model]
    (row,) = m["replicas"]
    return row


def generated_tokens(app, model: str) -> float:
    """vLLM's own count of generated tokens (its Prometheus logger, on the replica's listener)."""
    wait_for(lambda: vllm_row(app, model).get("metrics"), 30, "the vLLM replica to report its metrics listener")
    return metric_sum(scrape(vllm_row(app, model)["metrics"], app.admin_key), "vllm:generation_tokens_total{")


def test_client_disconnect_aborts_the_request_inside_vllm(serve_app, vllm_model):
    """docs/vllm.md, abort: a client that closes its stream ends the request inside vLLM, not
    only in the ingress: afterwards vLLM generates exactly the tokens of the next request."""
    client = openai.OpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0, timeout=120)
    stream = client.completions.create(model=vllm_model, prompt="def main(", max_tokens=1500, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks), next(chunks)
    wait_for(lambda: vllm_row(serve_app, vllm_model)["running"] >= 1, 60, "the replica to report the request")
    stream.close()
    wait_for(lambda: vllm_row(serve_app, vllm_model)["running"] == 0, 60, "the replica to drop the request")
    settled = generated_tokens(serve_app, vllm_model)
    probe = client.completions.create(model=vllm_model, prompt="x", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert probe.usage.completion_tokens == 5
    # Had vLLM kept decoding the closed stream, its steps during the probe would count too.
    wait_for(lambda: generated_tokens(serve_app, vllm_model) >= settled + 5, 30, "vLLM's token counter")
    assert generated_tokens(serve_app, vllm_model) == settled + 5


async def _first_token_at(stream) -> float:
    """When ``stream`` (an open stream, or a coroutine that opens one) yields its first text.
    The ingress answers a stream once its first output exists, so opening it waits too."""
    if asyncio.iscoroutine(stream):
        stream = await stream
    async for chunk in stream:
        if chunk.choices:
            return time.monotonic()
    raise AssertionError("the stream ended without a chunk")


async def test_priority_reaches_vllm_and_orders_its_queue(serve_app, vllm_model):
    """docs/vllm.md, priority: the tenant's class reaches vLLM's priority scheduler. With every
    vLLM slot taken (max_num_seqs 16), a batch request and then a premium one wait inside vLLM;
    when one slot frees, the premium request gets it although it arrived second."""
    keys = {}
    for tenant, tier in (("vllm-bulk", "batch"), ("vllm-vip", "premium")):
        created = _admin(serve_app, "POST", "/admin/tenants", json={"id": tenant, "tier": tier})
        assert created.status_code == 201, created.text
        keys[tier] = created.json()["api_key"]
    bulk = openai.AsyncOpenAI(base_url=serve_app.openai_base, api_key=keys["batch"], max_retries=0, timeout=300)
    vip = openai.AsyncOpenAI(base_url=serve_app.openai_base, api_key=keys["premium"], max_retries=0, timeout=300)
    # 16 x 1000 tokens fit the twin's 22k-token KV pool: no KV preemption muddles the order.
    long = dict(model=vllm_model, max_tokens=1000, temperature=0, stream=True, extra_body={"ignore_eos": True})
    short = dict(model=vllm_model, max_tokens=4, temperature=0, stream=True, extra_body={"ignore_eos": True})
    fillers = []
    try:
        fillers = [await bulk.completions.create(prompt=f"def f{i}(", **long) for i in range(16)]
        await asyncio.wait_for(asyncio.gather(*(_first_token_at(f) for f in fillers)), 120)  # 16 of 16 slots run

        async def waiting(n: int) -> None:
            seen = []

            def enough() -> bool:
                seen.append(vllm_row(serve_app, vllm_model))
                return seen[-1]["waiting"] >= n and seen[-1]["running"] == 16

            try:
                await asyncio.to_thread(wait_for, enough, 60, f"{n} request(s) waiting inside vLLM")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; last status row: {seen[-1:]}") from exc

        batch_first = asyncio.create_task(_first_token_at(bulk.completions.create(prompt="b", **short)))
        await waiting(1)
        premium_first = asyncio.create_task(_first_token_at(vip.completions.create(prompt="p", **short)))
        await waiting(2)
        assert not batch_first.done() and not premium_first.done()
        await fillers[0].close()  # one slot frees (the closed stream is aborted in vLLM)
        premium_at = await asyncio.wait_for(premium_first, 120)
        for f in fillers[1:]:  # now let the batch request run too
            await f.close()
        batch_at = await asyncio.wait_for(batch_first, 120)
        assert premium_at < batch_at  # fcfs would have given the free slot to the batch request
    finally:
        for f in fillers:
            await f.close()
        await bulk.close()
        await vip.close()
        for tenant in ("vllm-bulk", "vllm-vip"):
            _admin(serve_app, "DELETE", f"/admin/tenants/{tenant}")


def test_grpc_unary_and_stream_agree_on_vllm(serve_app, vllm_model):
    """gRPC reaches the vLLM replica through Serve's gRPC proxy: n=2 seeded choices stream to
    the same texts as the unary call."""
    md = [("application", serve_app.config.server.app_name), ("authorization", f"Bearer {serve_app.api_key}")]
    req = pb.GenerateRequest(model=vllm_model, prompt="def main():", max_tokens=8, seed=5, temperature=0.9, n=2)
    with grpc.insecure_channel(serve_app.grpc_target) as channel:
        stub = pbg.InferenceStub(channel)
        unary = stub.Generate(req, metadata=md, timeout=60)
        texts = {0: "", 1: ""}
        for chunk in stub.GenerateStream(req, metadata=md, timeout=60):
            if not chunk.HasField("usage"):
                texts[chunk.index] += chunk.text
    assert [c.index for c in unary.choices] == [0, 1]
    assert [texts[0], texts[1]] == [c.text for c in unary.choices]
    assert unary.usage.completion_tokens > 0
