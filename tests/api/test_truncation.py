"""Never a silent truncation (issue 25, item 1): a request the platform could not finish
ends as an error the client sees, and is metered as failed.

A stream that ends with ``finish_reason="abort"`` (engine shut down, drain timed out,
engine process died), with ``"error"``, or without any final output becomes a 5xx with an
OpenAI-shaped body (non-streaming), or an in-band error event followed by a final chunk per
unfinished choice whose finish_reason is ``error`` (streaming).

The ingress first tries to resume such a stream on another replica (tests/api/test_resume.py);
these scripted replicas cannot continue a request, so resuming is off here: what is checked
is the floor once no replica can take the request over.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetserve.api.resume import ResumePolicy
from fleetserve.config import ModelConfig
from fleetserve.deployments.replica import ModelReplica
from fleetserve.engine.protocol import RequestOutput
from tests.api.rest_harness import AUTH, GATE, MODEL, AsgiCall, ReplicaClient, ScriptedClient, make_rest, sse_events

NO_RESUME = ResumePolicy(max_resumes=0)
ENDPOINTS = {
    "/v1/completions": {"model": MODEL, "prompt": "hello"},
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
}


def tokens(n: int) -> list[RequestOutput]:
    return [RequestOutput("r", "ab"[i % 2], [i + 1], completion_tokens=i + 1) for i in range(n)]


ABORTED = tokens(3) + [GATE, RequestOutput("r", finished=True, finish_reason="abort", error="engine shut down")]
FAILED = tokens(2) + [GATE, RequestOutput("r", finished=True, finish_reason="error", error="step failed")]
CUT = tokens(3) + [GATE, None]  # the stream just stops: no final output
COMPLETE = tokens(3) + [RequestOutput("r", "c", [9], finished=True, finish_reason="length", completion_tokens=4)]


def _replica_died() -> BaseException:
    from ray.exceptions import ActorDiedError

    return ActorDiedError()


LOST = tokens(2) + [GATE, _replica_died()]  # over the Serve handle: the replica's actor died

# script -> (status of a non-streamed request, what the error says)
CASES = {"aborted": (ABORTED, 503, "engine shut down"), "failed": (FAILED, 500, "step failed"),
         "cut": (CUT, 503, "ended before the request finished"), "lost": (LOST, 503, "replica")}


def _assert_openai_error(body: dict, words: str) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and words in err["message"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
async def test_unfinished_unary_request_is_a_5xx_metered_as_error(tiny_llama_path, path, case):
    script, status, words = CASES[case]
    rest = make_rest(ScriptedClient(script), tiny_llama_path, resume=NO_RESUME)
    async with rest.client() as c:
        r = await c.post(path, json={**ENDPOINTS[path], "n": 2}, headers=AUTH)
    assert r.status_code == status, r.text
    _assert_openai_error(r.json(), words)
    if status == 503:
        assert r.headers["retry-after"] == "1"
    assert rest.tenant_requests("error") == 1 and rest.tenant_requests("ok") == 0
    assert rest.requests_with_status(status) == 1 and rest.requests_with_status(200) == 0


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
async def test_unfinished_stream_ends_with_an_error_event_and_error_finish(tiny_llama_path, path, case):
    script, _, words = CASES[case]
    client = ScriptedClient(script, gated=True)
    rest = make_rest(client, tiny_llama_path, resume=NO_RESUME)
    call = AsgiCall(rest.app, path, json.dumps({**ENDPOINTS[path], "n": 2, "stream": True}).encode(), AUTH)
    await call.read_until(b"data: ")  # the first tokens are out: then the streams fail
    client.gate.set()
    await call.finish()
    assert call.status == 200
    events = sse_events(call.body.decode())
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    errors = [i for i, p in enumerate(payloads) if "error" in p]
    assert len(errors) == 1
    _assert_openai_error(payloads[errors[0]], words)
    finishes = {c["index"]: c.get("finish_reason") for p in payloads if "choices" in p for c in p["choices"]
                if c.get("finish_reason")}
    assert finishes == {0: "error", 1: "error"}  # never "stop" / "length"
    assert all("choices" in p for p in payloads[errors[0] + 1:])  # the final chunks follow the error
    assert rest.tenant_requests("error") == 1 and rest.tenant_requests("ok") == 0


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
async def test_abort_before_the_first_token_is_a_503_even_when_streaming(tiny_llama_path, path):
    rest = make_rest(ScriptedClient(ABORTED[-1:]), tiny_llama_path)
    async with rest.client() as c:
        r = await c.post(path, json={**ENDPOINTS[path], "stream": True}, headers=AUTH)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    _assert_openai_error(r.json(), "engine shut down")


async def test_a_complete_stream_is_still_ok(tiny_llama_path):
    """The control: the same harness, a stream that does finish, succeeds (the tests above can fail)."""
    rest = make_rest(ScriptedClient(COMPLETE), tiny_llama_path)
    async with rest.client() as c:
        r = await c.post("/v1/completions", json=ENDPOINTS["/v1/completions"], headers=AUTH)
        s = await c.post("/v1/completions", json={**ENDPOINTS["/v1/completions"], "stream": True}, headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0] == {"index": 0, "text": "abac", "logprobs": None,
                                                                "finish_reason": "length"}
    assert '"finish_reason":"length"' in s.text and '"error"' not in s.text
    assert rest.tenant_requests("ok") == 2 and rest.requests_with_status(200) == 2


# ----- a real native engine (in-process AsyncEngine on the tiny checkpoint) -------------------


async def _replica(checkpoint, drain_mode: str = "finish") -> ModelReplica:
    cfg = ModelConfig(name=MODEL, checkpoint=str(checkpoint), drain_timeout_s=0.1, drain_mode=drain_mode,
                      engine_args={"num_kv_blocks": 256, "num_threads": 1, "engine_process": False})
    replica = ModelReplica.__new__(ModelReplica)  # Serve awaits the async constructor itself
    await replica.__init__(cfg.model_dump(mode="json"))
    return replica


async def _wait_until(pred, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# ~1,900 tokens take seconds on the tiny model; the replica's drain gives them 0.1 s.
LONG = {"max_tokens": 1900, "ignore_eos": True, "temperature": 0}


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_drain_timeout_of_a_real_engine_is_a_503_not_a_stop(tiny_llama_path):
    replica = await _replica(tiny_llama_path)
    rest = make_rest(ReplicaClient(replica), tiny_llama_path)
    async with rest.client() as c:
        pending = asyncio.create_task(c.post("/v1/completions", json={**ENDPOINTS["/v1/completions"], **LONG},
                                             headers=AUTH))
        await _wait_until(lambda: replica._engine.stats().generated_tokens_total > 0)
        await replica.__del__()  # Serve's shutdown: drain (times out after 0.1 s), then shut down
        r = await pending
    assert r.status_code == 503, r.text
    _assert_openai_error(r.json(), "engine shut down")
    assert rest.tenant_requests("error") == 1


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_real_engine_shut_down_mid_stream_ends_the_stream_with_an_error(tiny_llama_path):
    replica = await _replica(tiny_llama_path)
    rest = make_rest(ReplicaClient(replica), tiny_llama_path)
    body = json.dumps({**ENDPOINTS["/v1/chat/completions"], **LONG, "stream": True}).encode()
    call = AsgiCall(rest.app, "/v1/chat/completions", body, AUTH)
    await call.read_until(b'"role":"assistant"')  # streaming has begun: status 200 is out
    await replica.__del__()
    await call.finish()
    assert call.status == 200
    payloads = [json.loads(e) for e in sse_events(call.body.decode())[:-1]]
    assert "engine shut down" in payloads[-2]["error"]["message"]
    assert payloads[-1]["choices"][0]["finish_reason"] == "error"
    assert not any(c.get("finish_reason") in ("stop", "length") for p in payloads for c in p.get("choices", ()))
    assert rest.tenant_requests("error") == 1


@pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")
async def test_migrated_with_no_replica_left_is_a_503_not_a_stop(tiny_llama_path):
    """Drain mode migrate hands the stream back; with no other replica the bounded resume
    ends in a 503 naming why."""
    replica = await _replica(tiny_llama_path, drain_mode="migrate")
    rest = make_rest(ReplicaClient(replica), tiny_llama_path, resume=ResumePolicy(max_resumes=2, backoff_s=0.01))
    async with rest.client() as c:
        pending = asyncio.create_task(c.post("/v1/completions", json={**ENDPOINTS["/v1/completions"], **LONG},
                                             headers=AUTH))
        await _wait_until(lambda: replica._engine.stats().generated_tokens_total > 0)
        await replica.__del__()
        r = await pending
    assert r.status_code == 503, r.text
    _assert_openai_error(r.json(), "could not be resumed after 2 attempts")
    assert "draining" in r.json()["error"]["message"]
    assert rest.tenant_requests("error") == 1
