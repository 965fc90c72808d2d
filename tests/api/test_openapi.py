"""The served OpenAPI spec is the API contract (issue 25, item 3): request bodies from the
pydantic models that validate them, every error status with the OpenAI error body, SSE."""

from __future__ import annotations

import pytest

from fleetserve.api import openai_models as M
from fleetserve.tenants.admin_routes import TenantCreate, TenantPatch
from tests.api.rest_harness import ScriptedClient, make_rest

ERROR_REF = "#/components/schemas/ErrorResponse"

# (method, path) -> (body model or None, error statuses the route must document)
ROUTES = {
    ("post", "/v1/completions"): (M.CompletionRequest, {400, 401, 403, 404, 413, 429, 500, 503}),
    ("post", "/v1/chat/completions"): (M.ChatCompletionRequest, {400, 401, 403, 404, 413, 429, 500, 503}),
    ("get", "/v1/models"): (None, {401, 503}),
    ("post", "/admin/tenants"): (TenantCreate, {400, 401, 403, 409, 413, 503}),
    ("patch", "/admin/tenants/{tenant_id}"): (TenantPatch, {400, 401, 403, 404, 413, 503}),
    ("get", "/admin/tenants/{tenant_id}"): (None, {401, 403, 404, 503}),
    ("delete", "/admin/tenants/{tenant_id}"): (None, {401, 403, 404, 503}),
    ("post", "/admin/tenants/{tenant_id}/rotate-key"): (None, {400, 401, 403, 404, 503}),
    ("get", "/admin/tenants"): (None, {401, 403, 503}),
    ("get", "/admin/usage"): (None, {401, 403, 503}),
    ("get", "/admin/status"): (None, {401, 403, 503}),
}


@pytest.fixture(scope="module")
def spec(tiny_llama_path):
    import asyncio

    rest = make_rest(ScriptedClient([]), tiny_llama_path)

    async def get():
        async with rest.client() as c:
            r = await c.get("/openapi.json")
            assert r.status_code == 200
            return r.json()

    return asyncio.run(get())


def _resolve(spec: dict, ref: str) -> dict:
    assert ref.startswith("#/components/schemas/")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


@pytest.mark.parametrize("route", sorted(ROUTES), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_documents_its_body_and_errors(spec, route):
    method, path = route
    body_model, statuses = ROUTES[route]
    op = spec["paths"][path][method]
    if body_model is not None:
        schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"]["$ref"])
        want = body_model.model_json_schema()
        assert set(schema["properties"]) == set(want["properties"])
        assert schema.get("required", []) == want.get("required", [])
        # Admin bodies forbid unknown fields (a typo must not pass); the OpenAI bodies accept
        # and ignore them, as OpenAI's and vLLM's servers do (issue 24, item 3).
        lenient = path.startswith("/v1/")
        assert schema.get("additionalProperties") is lenient
    documented = {int(s) for s in op["responses"] if s[0] in "45"}
    assert statuses <= documented and 422 not in documented
    for s in documented:
        assert op["responses"][str(s)]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    assert op["security"] == [{"bearer": []}]


def test_error_body_schema_is_openai_shaped(spec):
    body = spec["components"]["schemas"]["ErrorResponse"]
    detail = _resolve(spec, body["properties"]["error"]["$ref"])
    assert set(detail["properties"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path,chunk", [("/v1/completions", "CompletionResponse"),
                                        ("/v1/chat/completions", "ChatCompletionChunk")])
def test_streaming_responses_are_documented_as_sse(spec, path, chunk):
    ok = spec["paths"][path]["post"]["responses"]["200"]["content"]
    assert "application/json" in ok
    sse = ok["text/event-stream"]["schema"]
    assert sse["type"] == "string" and "[DONE]" in sse["description"] and "error" in sse["description"]
    assert _resolve(spec, sse["x-sse-data"]["$ref"]) is spec["components"]["schemas"][chunk]


def test_health_needs_no_key_and_metrics_are_not_on_the_rest_port(spec):
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert "/metrics" not in spec["paths"]  # tenant series: on the private metrics listener only
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
