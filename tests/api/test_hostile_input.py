"""No 5xx for any client input (issue 25, item 2): a table of hostile bodies against the REST
app, each answered with a 4xx and an OpenAI-shaped error body naming the field."""

from __future__ import annotations

import json

import pytest

from fleetserve.api.json_body import MAX_JSON_DEPTH
from tests.api.rest_harness import ADMIN, AUTH, MODEL, ScriptedClient, make_rest
from tests.api.test_truncation import COMPLETE

CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
MAX_BODY = 64 * 1024


def _cmpl(**fields) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hi", **fields}).encode()


def _chat(**fields) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def _nested(depth: int) -> bytes:
    return b'{"model": "tiny", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


SURROGATE = "\ud800"  # json.dumps writes it as the escape \ud800, which json.loads accepts

# (id, path, raw body, status, error.param or None)
HOSTILE = [
    ("prompt-surrogate", CMPL, _cmpl(prompt=SURROGATE), 400, "prompt"),
    ("prompt-list-surrogate", CMPL, _cmpl(prompt=["ok", "x" + SURROGATE]), 400, "prompt.1"),
    ("content-surrogate", CHAT, _chat(messages=[{"role": "user", "content": SURROGATE}]), 400, "messages.0.content"),
    ("content-part-surrogate", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]),
     400, "messages.0.content.0.text"),
    ("name-surrogate", CHAT, _chat(messages=[{"role": "user", "content": "a", "name": "\udfff"}]), 400,
     "messages.0.name"),
    ("stop-surrogate", CMPL, _cmpl(stop=SURROGATE), 400, "stop"),
    ("stop-list-surrogate", CHAT, _chat(stop=["a", SURROGATE]), 400, "stop.1"),
    ("user-surrogate", CHAT, _chat(user=SURROGATE), 400, "user"),
    ("model-surrogate", CMPL, json.dumps({"model": SURROGATE, "prompt": "hi"}).encode(), 400, "model"),
    ("key-surrogate", CMPL, _cmpl(**{SURROGATE: 1}), 400, None),
    ("deep-nesting", CMPL, _nested(MAX_JSON_DEPTH + 5), 400, None),
    ("deeper-than-python", CMPL, _nested(30_000), 400, None),
    ("too-many-messages", CHAT, _chat(messages=[{"role": "user", "content": "a"}] * 257), 400, "messages"),
    ("too-many-parts", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * 65}]), 400,
     "messages.0.content"),
    ("too-many-stops", CMPL, _cmpl(stop=["a"] * 17), 400, "stop"),
    ("too-many-prompts", CMPL, _cmpl(prompt=["a"] * 17), 400, "prompt"),
    ("logit-bias", CMPL, _cmpl(logit_bias={str(i): 1 for i in range(5000)}), 400, "logit_bias"),
    ("stop-ids-too-many", CMPL, _cmpl(stop_token_ids=list(range(17))), 400, "stop_token_ids"),
    ("stop-id-negative", CHAT, _chat(stop_token_ids=[-1]), 400, "stop_token_ids.0"),
    ("stop-id-past-vocab", CHAT, _chat(stop_token_ids=[10**9]), 400, "stop_token_ids"),
    ("token-id-past-vocab", CMPL, _cmpl(prompt=[1, 10**12]), 400, "prompt"),
    ("token-id-negative", CMPL, _cmpl(prompt=[1, -5]), 400, "prompt"),
    ("empty-prompt-list", CMPL, _cmpl(prompt=[]), 400, "prompt"),
    ("huge-max-tokens", CMPL, _cmpl(max_tokens=10**30), 400, "max_tokens"),
    ("huge-int-literal", CMPL, b'{"model": "tiny", "prompt": "hi", "seed": ' + b"9" * 5000 + b"}", 400, None),
    ("nan-temperature", CMPL, b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ("inf-top-p", CHAT, _chat(top_p=float("inf")), 400, "top_p"),
    ("n-zero", CMPL, _cmpl(n=0), 400, "n"),
    ("n-huge", CMPL, _cmpl(n=10**6), 400, "n"),
    ("wrong-type", CHAT, _chat(messages="hello"), 400, "messages"),
    ("bad-role", CHAT, _chat(messages=[{"role": "root", "content": "a"}]), 400, "messages.0.role"),
    ("not-an-object", CMPL, b"[]", 400, None),
    ("null", CMPL, b"null", 400, None),
    ("empty", CHAT, b"", 400, None),
    ("not-json", CHAT, b"{model: tiny", 400, None),
    ("not-utf8", CMPL, b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, None),
    ("unknown-model", CMPL, json.dumps({"model": "nope", "prompt": "hi"}).encode(), 404, "model"),
    ("too-large", CMPL, _cmpl(prompt="a" * MAX_BODY), 413, None),
]


def assert_openai_error(r, status: int, param) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err


@pytest.fixture
def rest(tiny_llama_path):
    return make_rest(ScriptedClient(COMPLETE), tiny_llama_path, max_body_bytes=MAX_BODY)


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
async def test_hostile_bodies_are_4xx_naming_the_field(rest, case):
    _, path, body, status, param = case
    async with rest.client() as c:
        r = await c.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
        unauthenticated = await c.post(path, content=body, headers={"content-type": "application/json"})
    assert_openai_error(r, status, param)
    # The key is checked first: without one, every hostile body is a 401 (413: size comes first).
    assert_openai_error(unauthenticated, 413 if status == 413 else 401, None)


async def test_the_table_is_not_vacuous(rest):
    """The same harness serves a valid request (so the 4xx above are about the input)."""
    async with rest.client() as c:
        r = await c.post(CHAT, content=_chat(stop=["x"], user="ü-user"), headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


# ----- admin routes: authenticate first, then validate ------------------------------------

# (id, method, path, json body or raw bytes, status, error.param or None)
ADMIN_CASES = [
    ("id-surrogate", "POST", "/admin/tenants", {"id": SURROGATE}, 400, "id"),
    ("id-pattern", "POST", "/admin/tenants", {"id": "a b"}, 400, "id"),
    ("id-too-long", "POST", "/admin/tenants", {"id": "a" * 65}, 400, "id"),
    ("duplicate", "POST", "/admin/tenants", {"id": "acme"}, 409, "id"),
    ("weight-zero", "POST", "/admin/tenants", {"id": "n", "weight": 0}, 400, "weight"),
    ("weight-huge", "POST", "/admin/tenants", {"id": "n", "weight": 1e9}, 400, "weight"),
    ("weight-nan", "POST", "/admin/tenants", b'{"id": "n", "weight": NaN}', 400, "weight"),
    ("quota-zero", "POST", "/admin/tenants", {"id": "n", "quotas": {"requests_per_min": 0}}, 400,
     "quotas.requests_per_min"),
    ("quota-huge", "POST", "/admin/tenants", {"id": "n", "quotas": {"tokens_per_min": 10**13}}, 400,
     "quotas.tokens_per_min"),
    ("quota-unknown", "POST", "/admin/tenants", {"id": "n", "quotas": {"gpus": 1}}, 400, "quotas.gpus"),
    ("tier-unknown", "POST", "/admin/tenants", {"id": "n", "tier": "gold"}, 400, "tier"),
    ("models-too-many", "POST", "/admin/tenants", {"id": "n", "allowed_models": ["m"] * 257}, 400, "allowed_models"),
    ("models-empty-name", "POST", "/admin/tenants", {"id": "n", "allowed_models": [""]}, 400, "allowed_models.0"),
    ("extra-field", "POST", "/admin/tenants", {"id": "n", "api_key_hashes": []}, 400, "api_key_hashes"),
    ("not-json", "POST", "/admin/tenants", b"{id", 400, None),
    ("deep", "POST", "/admin/tenants", b'{"id": ' + b"[" * 100 + b"]" * 100 + b"}", 400, None),
    ("too-large", "POST", "/admin/tenants", {"id": "n", "tier": "x" * 70_000}, 413, None),
    ("patch-unknown-tenant", "PATCH", "/admin/tenants/nobody", {"weight": 2}, 404, "tenant"),
    ("patch-weight", "PATCH", "/admin/tenants/acme", {"weight": -1}, 400, "weight"),
    ("patch-quota-zero", "PATCH", "/admin/tenants/acme", {"quotas": {"max_concurrent": 0}}, 400,
     "quotas.max_concurrent"),
    ("patch-quota-unknown", "PATCH", "/admin/tenants/acme", {"quotas": {"gpus": 1}}, 400, "quotas.gpus"),
    ("patch-tier", "PATCH", "/admin/tenants/acme", {"tier": "gold"}, 400, "tier"),
    ("rotate-bad-flag", "POST", "/admin/tenants/acme/rotate-key?keep_old=maybe", None, 400, "keep_old"),
    ("rotate-unknown", "POST", "/admin/tenants/nobody/rotate-key", None, 404, "tenant"),
    ("get-unknown", "GET", "/admin/tenants/nobody", None, 404, "tenant"),
    ("delete-unknown", "DELETE", "/admin/tenants/nobody", None, 404, "tenant"),
]


def _content(body) -> dict:
    if body is None:
        return {}
    return {"content": body if isinstance(body, bytes) else json.dumps(body).encode()}


@pytest.mark.parametrize("case", ADMIN_CASES, ids=[c[0] for c in ADMIN_CASES])
async def test_admin_input_is_4xx_naming_the_field_after_authentication(rest, case):
    _, method, path, body, status, param = case
    async with rest.client() as c:
        r = await c.request(method, path, headers=ADMIN, **_content(body))
        anonymous = await c.request(method, path, **_content(body))
        tenant = await c.request(method, path, headers=AUTH, **_content(body))
    assert_openai_error(r, status, param)
    assert_openai_error(anonymous, 401, None)
    assert_openai_error(tenant, 403, None)


async def test_admin_create_then_patch_within_ranges(rest):
    async with rest.client() as c:
        r = await c.post("/admin/tenants", headers=ADMIN, json={"id": "new", "weight": 1000, "quotas": {"max_context": 10**12}})
        p = await c.patch("/admin/tenants/new", headers=ADMIN, json={"quotas": {"max_context": None}, "weight": 0.5})
    assert r.status_code == 201 and p.status_code == 200
    assert p.json()["tenant"]["weight"] == 0.5 and p.json()["tenant"]["quotas"]["max_context"] is None
