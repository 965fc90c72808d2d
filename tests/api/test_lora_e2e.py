"""LoRA adapters end to end on Ray Serve with the official openai client: an adapter added at
runtime through the admin API is loaded on the replica and served as its own model name; a
tenant whose registry entry does not allow it gets an OpenAI-shaped 403."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.ray


def _admin(app, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, app.base_url + path, headers={"Authorization": f"Bearer {app.admin_key}"},
                         timeout=60, **kw)


def _reply(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "import os"}],
                                       max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r.model == model
    return r.choices[0].message.content


def test_runtime_adapter_served_by_name_and_forbidden_tenant_gets_403(serve_app, make_adapter):
    path = str(make_adapter(serve_app.checkpoint, seed=7))
    name = f"{serve_app.model}:e2e"
    added = _admin(serve_app, "POST", "/admin/adapters", json={"model": serve_app.model, "id": "e2e", "path": path})
    assert added.status_code == 201, added.text
    assert any(r["applied"] for r in added.json()["replicas"])
    created = _admin(serve_app, "POST", "/admin/tenants",
                     json={"id": "no-lora", "tier": "standard", "allowed_adapters": []})
    assert created.status_code == 201, created.text
    try:
        client = openai.OpenAI(base_url=serve_app.openai_base, api_key=serve_app.api_key, max_retries=0)
        tuned, base = _reply(client, name), _reply(client, serve_app.model)
        assert tuned != base and _reply(client, name) == tuned
        assert name in [m.id for m in client.models.list().data]

        denied = openai.OpenAI(base_url=serve_app.openai_base, api_key=created.json()["api_key"], max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as exc:
            _reply(denied, name)
        assert exc.value.status_code == 403
        assert exc.value.body["type"] == "permission_error" and exc.value.body["param"] == "model"
        assert _reply(denied, serve_app.model) == base  # the base model stays allowed
    finally:
        assert _admin(serve_app, "DELETE", f"/admin/adapters/{name}").status_code == 200
        _admin(serve_app, "DELETE", "/admin/tenants/no-lora")
    with pytest.raises(openai.NotFoundError):
        _reply(client, name)
