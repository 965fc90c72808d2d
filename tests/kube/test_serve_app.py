"""The RayService application builder puts the pod's secrets back into the chart's config."""

from __future__ import annotations

import pytest

from fleetserve.errors import ConfigError
from fleetserve.kube import serve_app
from fleetserve.tenants.keys import hash_api_key

HASH_A, HASH_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def fleet(**overrides) -> dict:
    cfg = {"server": {"host": "0.0.0.0", "port": 8000},
           "models": [{"name": "m", "checkpoint": "/models/m", "engine": "vllm", "resources": {"num_gpus": 1}}],
           "tenants": {"tenants": [{"id": "acme", "tier": "premium"}, {"id": "b.co", "tier": "batch"}]}}
    cfg.update(overrides)
    return cfg


def keys_dir(tmp_path, files: dict):
    d = tmp_path / "keys"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_no_secrets_leaves_the_config_as_is():
    cfg = serve_app.resolve_config(fleet(), {})
    assert cfg.tenants.admin_key_hash is None and cfg.tenants.redis_url is None
    assert cfg.tenants.tenants[0].api_key_hashes == []


def test_secrets_land_where_the_config_expects_them(tmp_path):
    d = keys_dir(tmp_path, {"acme": f"{HASH_A}\n{HASH_B}\n", "b.co": f"{HASH_B}, {HASH_A}",
                            "..data": "ignored", "..2026_11_30": "ignored"})
    data = fleet()
    cfg = serve_app.resolve_config(data, {serve_app.ADMIN_KEY_ENV: "fs-admin-k" * 3, serve_app.REDIS_URL_ENV: "redis://:p@r:6379/0",
                                          serve_app.TENANT_KEYS_DIR_ENV: str(d)})
    assert cfg.tenants.admin_key_hash == hash_api_key("fs-admin-k" * 3)  # the key itself never enters the config
    assert cfg.server.admin_key is None
    assert cfg.tenants.redis_url == "redis://:p@r:6379/0"
    assert [t.api_key_hashes for t in cfg.tenants.tenants] == [[HASH_A, HASH_B], [HASH_B, HASH_A]]
    assert "api_key_hashes" not in data["tenants"]["tenants"][0]  # the caller's dict is untouched


def test_keys_for_an_undefined_tenant_are_refused(tmp_path):
    d = keys_dir(tmp_path, {"acme": HASH_A, "acme-typo": HASH_B})
    with pytest.raises(ConfigError, match="acme-typo") as info:
        serve_app.resolve_config(fleet(), {serve_app.TENANT_KEYS_DIR_ENV: str(d)})
    assert info.value.field == "tenants.tenants"


def test_bad_hash_names_the_field(tmp_path):
    d = keys_dir(tmp_path, {"acme": "plaintext-key"})
    with pytest.raises(ConfigError) as info:
        serve_app.resolve_config(fleet(), {serve_app.TENANT_KEYS_DIR_ENV: str(d)})
    assert info.value.field.startswith("tenants.tenants.0.api_key_hashes")


def test_admin_key_without_tenants_section():
    cfg = serve_app.resolve_config(fleet(tenants=None), {serve_app.ADMIN_KEY_ENV: "fs-admin-" + "z" * 20})
    assert cfg.tenants.admin_key_hash == hash_api_key("fs-admin-" + "z" * 20)


def test_build_requires_config():
    with pytest.raises(ConfigError, match="args"):
        serve_app.build({}, environ={})
