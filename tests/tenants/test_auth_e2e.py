"""Auth and isolation through the real ingress (Ray Serve on loopback), over REST and gRPC.

Tenants of the shared test app (tests/fixtures/ray_serve.py): ``test`` (standard, any
model) and ``other`` (batch, allowed only a model that does not exist).
"""

from __future__ import annotations

import grpc
import httpx
import pytest

pytestmark = pytest.mark.ray


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def completion(app, key=None):
    headers = bearer(key) if key else {}
    return httpx.post(app.openai_base + "/completions", headers=headers, timeout=60,
                      json={"model": app.model, "prompt": "x", "max_tokens": 1})


def test_rest_401_403_and_openai_shaped_errors(serve_app):
    r = completion(serve_app)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = completion(serve_app, "fs-not-a-key")
    assert r.status_code == 401 and "fs-not-a-key" not in r.text
    r = completion(serve_app, serve_app.api_key + "-other")  # tenant `other` may not use this model
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert completion(serve_app, serve_app.api_key).status_code == 200


def test_rest_admin_routes_and_cross_tenant_usage(serve_app):
    base = serve_app.base_url
    assert httpx.get(base + "/admin/tenants", headers=bearer(serve_app.api_key)).status_code == 403
    r = httpx.get(base + "/admin/tenants", headers=bearer(serve_app.admin_key))
    assert r.status_code == 200 and {t["id"] for t in r.json()["tenants"]} >= {"test", "other"}
    assert "sha256:" not in r.text
    completion(serve_app, serve_app.api_key)
    own = httpx.get(base + "/admin/usage", headers=bearer(serve_app.api_key))
    assert own.status_code == 200 and set(own.json()["usage"]) == {"test"}
    assert own.json()["usage"]["test"][serve_app.model]["requests"] >= 1
    cross = httpx.get(base + "/admin/usage", params={"tenant": "test"}, headers=bearer(serve_app.api_key + "-other"))
    assert cross.status_code == 403
    everyone = httpx.get(base + "/admin/usage", headers=bearer(serve_app.admin_key)).json()["usage"]
    assert "other" in everyone  # its 403s were metered as rejections


def test_grpc_auth_and_permission(serve_app):
    from fleetserve.api.grpc import inference_pb2 as pb
    from fleetserve.api.grpc import inference_pb2_grpc as pbg

    app_meta = ("application", serve_app.config.server.app_name)
    with grpc.insecure_channel(serve_app.grpc_target) as channel:
        stub = pbg.InferenceStub(channel)
        req = pb.GenerateRequest(model=serve_app.model, prompt="x", max_tokens=1)
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(req, metadata=[app_meta], timeout=60)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(req, metadata=[app_meta, ("authorization", f"Bearer {serve_app.api_key}-other")], timeout=60)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        ok = stub.Generate(req, metadata=[app_meta, ("authorization", f"Bearer {serve_app.api_key}")], timeout=60)
        assert ok.usage.completion_tokens == 1


def test_metrics_carry_tenant_and_fleet_series(serve_app):
    completion(serve_app, serve_app.api_key)
    from tests.fixtures.metrics_scrape import ingress_metrics

    text = ingress_metrics(serve_app.base_url, serve_app.admin_key)
    assert 'fleetserve_tenant_requests_total{model="%s",outcome="ok",tenant="test"}' % serve_app.model in text
    assert 'fleetserve_fleet_queue_wait_seconds_count{model="%s",priority_class="1"}' % serve_app.model in text


def test_runtime_tenant_quota_gives_429_with_retry_after_then_removal_revokes(serve_app):
    base = serve_app.base_url
    admin = bearer(serve_app.admin_key)
    r = httpx.post(base + "/admin/tenants", headers=admin, timeout=30,
                   json={"id": "tight", "tier": "batch", "quotas": {"requests_per_min": 1}})
    assert r.status_code == 201, r.text
    key = r.json()["api_key"]
    try:
        assert completion(serve_app, key).status_code == 200  # no restart needed
        over = completion(serve_app, key)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= float(over.headers["Retry-After"]) <= 60  # 1 request/min refills within a minute
    finally:
        assert httpx.delete(base + f"/admin/tenants/tight", headers=admin, timeout=30).status_code in (200, 204)
    assert completion(serve_app, key).status_code == 401
