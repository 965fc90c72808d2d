"""Two ingress replicas (two real REST apps, each with its own InferenceService) share one
adapter catalog through a real redis-server: an adapter added through one's admin API is
served by the other once its refresh period has passed, and removed the same way."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fleetserve.api.adapter_routes import build_adapter_router
from fleetserve.api.adapters import AdapterCatalog
from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.canary.store import RedisCanaryStore
from fleetserve.clock import FakeClock
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.api.rest_harness import ADMIN, AUTH, MODEL, TENANT_KEY, Rest, ScriptedClient
from tests.api.test_truncation import COMPLETE
from tests.tenants.factories import make_config, make_spec

pytestmark = pytest.mark.redis


class RecordingClient(ScriptedClient):
    """The scripted stream, remembering the adapter each engine request carried."""

    def __init__(self):
        super().__init__(COMPLETE)
        self.loras = []

    def generate(self, request, route):
        self.loras.append(request.lora)
        return super().generate(request, route)


def ingress(checkpoint, store, clock) -> tuple[Rest, RecordingClient]:
    registry = CollectorRegistry()
    gk = TenantGatekeeper(make_config(make_spec(id="acme", key=TENANT_KEY)), metrics_registry=registry)
    client = RecordingClient()
    catalog = AdapterCatalog([MODEL], store, refresh_s=2.0, clock=clock)
    service = InferenceService([ModelSpec(MODEL, str(checkpoint))], client, gk, metrics=FleetMetrics(), adapters=catalog)
    return Rest(build_rest_app(service, routers=(build_adapter_router(service, None),)), service, gk, registry), client


def body(model: str) -> dict:
    return {"model": model, "prompt": "hi", "max_tokens": 4}


async def test_an_adapter_added_on_one_ingress_is_served_by_the_other(tiny_llama_path, tmp_path, redis_url):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    clock = FakeClock(0.0)
    stores = [RedisCanaryStore.from_url(redis_url, prefix="fleetserve:") for _ in range(2)]
    (one, _), (two, engine_two) = ingress(tiny_llama_path, stores[0], clock), ingress(tiny_llama_path, stores[1], clock)
    try:
        async with one.client() as c1, two.client() as c2:
            assert (await c2.post("/v1/completions", json=body(MODEL), headers=AUTH)).status_code == 200
            added = await c1.post("/admin/adapters", headers=ADMIN,
                                  json={"model": MODEL, "id": "a", "path": str(tmp_path), "aliases": ["my-a"]})
            assert added.status_code == 201, added.text
            revision = added.json()["adapter"]["revision"]
            listed = (await c2.get("/admin/adapters", headers=ADMIN)).json()["adapters"]  # admin reads the store
            assert [a["name"] for a in listed] == [f"{MODEL}:a"]
            clash = await c2.post("/admin/adapters", headers=ADMIN, json={"model": MODEL, "id": "b", "path": str(tmp_path),
                                                                          "aliases": ["my-a"]})
            assert clash.status_code == 409

            clock.advance(2.0)
            r = await c2.post("/v1/completions", json=body("my-a"), headers=AUTH)
            assert r.status_code == 200 and r.json()["model"] == f"{MODEL}:a", r.text
            assert engine_two.loras[-1].name == f"{MODEL}:a" and engine_two.loras[-1].revision == revision
            assert f"{MODEL}:a" in [m["id"] for m in (await c2.get("/v1/models", headers=AUTH)).json()["data"]]

            assert (await c2.delete(f"/admin/adapters/{MODEL}:a", headers=ADMIN)).status_code == 200
            clock.advance(2.0)
            gone = await c1.post("/v1/completions", json=body(f"{MODEL}:a"), headers=AUTH)
            assert gone.status_code == 404
    finally:
        for s in stores:
            await s.close()
