"""LoRA adapters through the REST edge without Ray: a real ModelReplica (native engine with
LoRA slots) behind the real app, the admin routes pushing to it, tenant permissions."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.api.adapter_routes import build_adapter_router
from fleetserve.api.adapters import AdapterCatalog
from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.config import ModelConfig
from fleetserve.deployments.replica import ModelReplica
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.rest_harness import ADMIN, ADMIN_KEY, MODEL, ReplicaClient, Rest
from tests.tenants.factories import make_config, make_spec

pytestmark = pytest.mark.filterwarnings("ignore:coroutine .ModelReplica.__del__. was never awaited")

ALLOWED, DENIED = {"Authorization": "Bearer fs-allowed"}, {"Authorization": "Bearer fs-denied"}


class DirectControl:
    """AdapterControl straight onto one in-process replica (what HandleReplicaControl does through Serve)."""

    def __init__(self, replica: ModelReplica):
        self.replica = replica

    async def add_adapter(self, model, replica_ids, ref):
        return [await self.replica.add_adapter(ref)]

    async def remove_adapter(self, model, replica_ids, name):
        return [await self.replica.remove_adapter(name)]

    async def list_adapters(self, model, replica_ids):
        return [await self.replica.list_adapters()]


@pytest.fixture
async def rest(tiny_llama_path):
    cfg = ModelConfig(name=MODEL, checkpoint=str(tiny_llama_path), drain_timeout_s=0.1, engine_args={
        "num_kv_blocks": 256, "num_threads": 1, "engine_process": False, "enable_lora": True, "max_lora_rank": 8})
    replica = ModelReplica.__new__(ModelReplica)
    await replica.__init__(cfg.model_dump(mode="json"))
    tenants = make_config(make_spec(id="allowed", key="fs-allowed"),
                          make_spec(id="denied", key="fs-denied", allowed_adapters=[]))
    registry = CollectorRegistry()
    gk = TenantGatekeeper(tenants, metrics_registry=registry)
    service = InferenceService([ModelSpec(MODEL, str(tiny_llama_path))], ReplicaClient(replica), gk,
                               metrics=FleetMetrics(), adapters=AdapterCatalog([MODEL]))
    app = build_rest_app(service, routers=(build_adapter_router(service, DirectControl(replica)),))
    yield Rest(app, service, gk, registry)
    await replica._engine.shutdown()


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "def main():"}], "max_tokens": 8,
            "temperature": 0, "ignore_eos": True}


async def test_admin_adds_an_adapter_tenants_call_it_by_name(rest, tiny_llama_path, make_adapter):
    path = str(make_adapter(tiny_llama_path, seed=1))
    async with rest.client() as c:
        # The admin key is checked before the body is even parsed.
        assert (await c.post("/admin/adapters", content=b"{not json")).status_code == 401
        assert (await c.post("/admin/adapters", content=b"{not json", headers=ALLOWED)).status_code == 403
        r = await c.post("/admin/adapters", json={"model": MODEL, "id": "a", "path": path, "aliases": ["my-a"]},
                         headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["replicas"][0]["applied"] and r.json()["adapter"]["name"] == f"{MODEL}:a"
        dup = await c.post("/admin/adapters", json={"model": MODEL, "id": "a", "path": path}, headers=ADMIN)
        assert dup.status_code == 409
        listed = (await c.get("/admin/adapters?replicas=true", headers=ADMIN)).json()
        assert [a["name"] for a in listed["adapters"]] == [f"{MODEL}:a"]
        assert [a["name"] for a in listed["replicas"][0]["adapters"]] == [f"{MODEL}:a"]

        base = await c.post("/v1/chat/completions", json=chat(MODEL), headers=ALLOWED)
        tuned = await c.post("/v1/chat/completions", json=chat(f"{MODEL}:a"), headers=ALLOWED)
        alias = await c.post("/v1/chat/completions", json=chat("my-a"), headers=ALLOWED)
        assert base.status_code == tuned.status_code == alias.status_code == 200, tuned.text
        text = lambda r: r.json()["choices"][0]["message"]["content"]  # noqa: E731
        assert tuned.json()["model"] == f"{MODEL}:a"
        assert text(tuned) == text(alias) != text(base)
        models = (await c.get("/v1/models", headers=ALLOWED)).json()["data"]
        assert [m["id"] for m in models] == [MODEL, f"{MODEL}:a"]

        denied = await c.post("/v1/chat/completions", json=chat(f"{MODEL}:a"), headers=DENIED)
        assert denied.status_code == 403
        assert denied.json()["error"]["type"] == "permission_error" and denied.json()["error"]["param"] == "model"
        assert [m["id"] for m in (await c.get("/v1/models", headers=DENIED)).json()["data"]] == [MODEL]

        assert (await c.delete("/admin/adapters/my-a", headers=ADMIN)).status_code == 200
        gone = await c.post("/v1/chat/completions", json=chat(f"{MODEL}:a"), headers=ALLOWED)
        assert gone.status_code == 404


async def test_a_bad_adapter_is_refused_and_not_kept(rest, tmp_path, tiny_llama_gqa_path, make_adapter):
    wrong_base = str(make_adapter(tiny_llama_gqa_path, seed=1))  # shapes of another model
    async with rest.client() as c:
        r = await c.post("/admin/adapters", json={"model": MODEL, "id": "x", "path": wrong_base}, headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"]["param"] == "path", r.text
        missing = await c.post("/admin/adapters", json={"model": MODEL, "id": "y", "path": str(tmp_path)},
                               headers=ADMIN)
        assert missing.status_code == 400
        unknown = await c.post("/admin/adapters", json={"model": "nope", "id": "y", "path": wrong_base},
                               headers=ADMIN)
        assert unknown.status_code == 404
        assert (await c.get("/admin/adapters", headers=ADMIN)).json()["adapters"] == []
        assert (await c.post("/v1/chat/completions", json=chat(f"{MODEL}:x"), headers=ALLOWED)).status_code == 404


async def test_usage_is_metered_per_adapter_not_against_the_base(rest, tiny_llama_path, make_adapter):
    """An adapter request is metered as ``<model>:<id>`` (alias resolved), in the store the
    usage API reads and in the tenant series; the base model's row counts only its own."""
    path = str(make_adapter(tiny_llama_path, seed=1))
    async with rest.client() as c:
        r = await c.post("/admin/adapters", json={"model": MODEL, "id": "a", "path": path, "aliases": ["my-a"]},
                         headers=ADMIN)
        assert r.status_code == 201, r.text
        for model in (MODEL, f"{MODEL}:a", "my-a"):
            assert (await c.post("/v1/chat/completions", json=chat(model), headers=ALLOWED)).status_code == 200
        assert (await c.post("/v1/chat/completions", json=chat("my-a"), headers=DENIED)).status_code == 403
        usage = (await c.get("/admin/usage", headers=ADMIN)).json()["usage"]
        own = (await c.get("/admin/usage", headers=ALLOWED)).json()["usage"]
    assert usage["allowed"] == own["allowed"]
    assert set(usage["allowed"]) == {MODEL, f"{MODEL}:a"}
    assert usage["allowed"][MODEL]["requests"] == 1 and usage["allowed"][f"{MODEL}:a"]["requests"] == 2
    assert usage["allowed"][f"{MODEL}:a"]["completion_tokens"] == 16  # 2 x max_tokens 8, ignore_eos
    assert usage["denied"][f"{MODEL}:a"]["rejected"] == 1 and usage["denied"][f"{MODEL}:a"]["requests"] == 0
    sample = lambda name, model, **kw: rest.registry.get_sample_value(  # noqa: E731
        name, {"tenant": "allowed", "model": model, **kw})
    assert sample("fleetserve_tenant_requests_total", f"{MODEL}:a", outcome="ok") == 2
    assert sample("fleetserve_tenant_requests_total", MODEL, outcome="ok") == 1
    assert sample("fleetserve_tenant_completion_tokens_total", f"{MODEL}:a") == 16
