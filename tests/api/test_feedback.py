"""POST /v1/feedback and GET /admin/ab/{model} through the real REST app and request path
(in-process InferenceService, real gatekeeper with two tenants, a scripted stream stage)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.canary.ab_config import PredictionLogConfig
from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.ab_store import MemoryABStore
from fleetserve.canary.prediction_log import PredictionLogger
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.rest_harness import ADMIN, AUTH, MODEL, Rest, ScriptedClient
from tests.api.test_truncation import COMPLETE
from tests.tenants.factories import make_config, make_spec

OTHER_KEY = "fs-other-key"
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
SHY_KEY = "fs-shy-key"
SHY = {"Authorization": f"Bearer {SHY_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


def make_ab_rest(checkpoint, *, predictions: PredictionLogger | None = None, store=None) -> Rest:
    registry = CollectorRegistry()
    cfg = make_config(make_spec(id="acme", key="fs-tenant-key"), make_spec(id="other", key=OTHER_KEY),
                      make_spec(id="shy", key=SHY_KEY, prediction_log_opt_out=True))
    gk = TenantGatekeeper(cfg, metrics_registry=registry)
    metrics = FleetMetrics()
    ab = ABRecorder(store or MemoryABStore(), metrics=metrics, predictions=predictions)
    service = InferenceService([ModelSpec(MODEL, str(checkpoint))], ScriptedClient(COMPLETE), gk, metrics=metrics,
                               ab=ab)
    return Rest(build_rest_app(service), service, gk, registry)


async def chat_id(http, headers=AUTH, path="/v1/chat/completions", body=CHAT) -> str:
    r = await http.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["id"]


async def test_feedback_on_own_response_is_recorded_per_variant(tiny_llama_path):
    rest = make_ab_rest(tiny_llama_path)
    async with rest.client() as http:
        rid = await chat_id(http)
        assert rid.startswith("chatcmpl-")
        r = await http.post("/v1/feedback", json={"id": rid, "outcome": True}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {"id": rid, "object": "feedback", "model": MODEL, "version": "v1", "outcome": True}
        cid = await chat_id(http, path="/v1/completions", body={"model": MODEL, "prompt": "hi"})
        assert cid.startswith("cmpl-")
        assert (await http.post("/v1/feedback", json={"id": cid, "outcome": 0.5}, headers=AUTH)).status_code == 200
        again = await http.post("/v1/feedback", json={"id": rid, "outcome": False}, headers=AUTH)
        assert again.status_code == 409 and again.json()["error"]["param"] == "id"
        report = (await http.get(f"/admin/ab/{MODEL}", headers=ADMIN)).json()
    v1 = report["variants"][0]
    assert (v1["version"], v1["requests"], v1["errors"], v1["feedback"], v1["positive"]) == ("v1", 2, 0, 2, 1)
    assert v1["numeric_mean"] == 0.5 and v1["ttft_s"]["p50"] is not None
    got = rest.service.metrics.registry.get_sample_value(
        "fleetserve_feedback_total", {"tenant": "acme", "model": MODEL, "version": "v1", "outcome": "positive"})
    assert got == 1.0


async def test_another_tenants_id_is_a_404_like_an_unknown_one(tiny_llama_path):
    rest = make_ab_rest(tiny_llama_path)
    async with rest.client() as http:
        rid = await chat_id(http)
        theirs = await http.post("/v1/feedback", json={"id": rid, "outcome": True}, headers=OTHER)
        unknown = await http.post("/v1/feedback", json={"id": "chatcmpl-nope", "outcome": True}, headers=OTHER)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
        # ...and the owner can still give feedback: the failed attempt claimed nothing.
        assert (await http.post("/v1/feedback", json={"id": rid, "outcome": True}, headers=AUTH)).status_code == 200


@pytest.mark.parametrize("body, status, param", [
    (b'{"id": "x"}', 400, "outcome"),
    (b'{"id": "x", "outcome": "yes"}', 400, "outcome"),
    (b'{"id": "x", "outcome": NaN}', 400, None),
    (b'{"id": "x", "outcome": 1e300}', 400, "outcome"),
    (b'{"id": "", "outcome": true}', 400, "id"),
    (b'{"id": "x", "outcome": true, "extra": 1}', 400, "extra"),
    (b'[1, 2]', 400, None),
    (b'not json', 400, None),
    (b'{"id": "x", "outcome": true}', 404, "id"),
])
async def test_bad_feedback_bodies_are_clear_4xx(tiny_llama_path, body, status, param):
    rest = make_ab_rest(tiny_llama_path)
    async with rest.client() as http:
        r = await http.post("/v1/feedback", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and (param is None or err["param"] == param), err


async def test_keys_are_checked_before_anything_is_read(tiny_llama_path):
    rest = make_ab_rest(tiny_llama_path)
    async with rest.client() as http:
        assert (await http.post("/v1/feedback", content=b"not json")).status_code == 401
        assert (await http.get("/admin/ab/nope?alpha=7")).status_code == 401
        assert (await http.get(f"/admin/ab/{MODEL}", headers=AUTH)).status_code in (401, 403)  # a tenant key
        assert (await http.get("/admin/ab/nope", headers=ADMIN)).status_code == 404
        bad = await http.get(f"/admin/ab/{MODEL}?alpha=7", headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "alpha"
        unknown_param = await http.get(f"/admin/ab/{MODEL}?beta=1", headers=ADMIN)
        assert unknown_param.status_code == 400


async def test_openapi_documents_the_feedback_body(tiny_llama_path):
    rest = make_ab_rest(tiny_llama_path)
    async with rest.client() as http:
        spec = (await http.get("/openapi.json")).json()
    op = spec["paths"]["/v1/feedback"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/FeedbackRequest")
    schema = spec["components"]["schemas"]["FeedbackRequest"]
    assert set(schema["required"]) == {"id", "outcome"} and schema["additionalProperties"] is False
    assert {"404", "409", "401"} <= set(op["responses"])
    assert {p["name"] for p in spec["paths"]["/admin/ab/{model}"]["get"]["parameters"]} >= {"alpha", "power", "mde"}


async def test_prediction_log_through_the_request_path_skips_opted_out_tenants(tiny_llama_path, tmp_path):
    cfg = PredictionLogConfig(enabled=True, sample_rate=1.0, directory=str(tmp_path))
    rest = make_ab_rest(tiny_llama_path, predictions=PredictionLogger.from_config(cfg))
    async with rest.client() as http:
        rid = await chat_id(http)
        await chat_id(http, headers=SHY)
        stream = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert stream.status_code == 200
    lines = [json.loads(x) for x in (tmp_path / f"{MODEL}@v1.jsonl").read_text().splitlines()]
    assert [x["tenant"] for x in lines] == ["acme", "acme"]  # never "shy"
    assert lines[0]["request_id"] == rid.removeprefix("chatcmpl-")
    assert lines[0]["outputs"] == ["abac"] and lines[0]["prompt_token_ids"][0] and lines[0]["status"] == "200"
    logged = rest.service.metrics.registry.get_sample_value(
        "fleetserve_predictions_logged_total", {"model": MODEL, "version": "v1"})
    assert logged == 2.0


async def test_every_per_request_series_carries_the_version(tiny_llama_path):
    rest = make_ab_rest(tiny_llama_path)
    async with rest.client() as http:
        await chat_id(http)
    from prometheus_client import generate_latest

    text = generate_latest(rest.service.metrics.registry).decode()  # what the private listener serves
    per_request = [line for line in text.splitlines() if line.startswith((
        "fleetserve_requests_total", "fleetserve_prompt_tokens_total", "fleetserve_completion_tokens_total",
        "fleetserve_time_to_first_token_seconds", "fleetserve_time_per_output_token_seconds",
        "fleetserve_e2e_request_latency_seconds"))]
    assert per_request and all('version="v1"' in line for line in per_request if "{" in line)


@pytest.mark.redis
async def test_two_ingress_replicas_share_ids_and_counters_through_redis(tiny_llama_path, redis_url):
    from fleetserve.canary.ab_store import RedisABStore

    a = make_ab_rest(tiny_llama_path, store=RedisABStore.from_url(redis_url))
    b = make_ab_rest(tiny_llama_path, store=RedisABStore.from_url(redis_url))
    async with a.client() as http_a, b.client() as http_b:
        rid = await chat_id(http_a)  # served by replica a
        assert (await http_b.post("/v1/feedback", json={"id": rid, "outcome": True}, headers=OTHER)).status_code == 404
        assert (await http_b.post("/v1/feedback", json={"id": rid, "outcome": True}, headers=AUTH)).status_code == 200
        assert (await http_a.post("/v1/feedback", json={"id": rid, "outcome": True}, headers=AUTH)).status_code == 409
        await chat_id(http_b)
        report = (await http_a.get(f"/admin/ab/{MODEL}", headers=ADMIN)).json()
    v1 = report["variants"][0]
    assert (v1["requests"], v1["feedback"], v1["positive"]) == (2, 1, 1)
    await a.service.ab.close()
    await b.service.ab.close()
