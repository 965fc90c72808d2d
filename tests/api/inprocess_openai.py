"""The official ``openai`` client over the real REST app and one in-process engine (no Ray)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import openai
from prometheus_client import CollectorRegistry

from fleetserve.api.rest import build_rest_app
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from tests.tenants.factories import make_config, make_spec


class EngineClient:
    """ModelClient over one in-process engine."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    def generate(self, request, route):
        return self.engine.generate(request)

    async def model_info(self, model):
        return self.engine.model_info()


@asynccontextmanager
async def inprocess_openai(checkpoint: str, model: str, key: str):
    engine = AsyncEngine.from_config(model=checkpoint, max_model_len=1024, num_kv_blocks=512, max_num_seqs=64)
    gatekeeper = TenantGatekeeper(make_config(make_spec(key=key)), metrics_registry=CollectorRegistry())
    service = InferenceService([ModelSpec(model, checkpoint)], EngineClient(engine), gatekeeper)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_rest_app(service)), base_url="http://fleetserve.test")
    try:
        yield openai.AsyncOpenAI(api_key=key, base_url="http://fleetserve.test/v1", http_client=http, max_retries=0)
    finally:
        await http.aclose()
        await engine.shutdown()
