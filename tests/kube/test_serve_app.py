"""The RayService application builder puts the pod's secrets back into the chart's config."""

from __future__ import annotations

import pytest

from fleetserve.errors import ConfigError
from fleetserve.kube import serve_app
from fleetserve.tenants.keys import hash_api_key

HASH_A, HASH_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
STRONG_ADMIN_KEY = "fs-admin-Q3v9xLk2pR7tW1mZ8yB4nC6dF0hJ5sGaUe"  # a fixed key of generate_api_key's shape


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
    cfg = serve_app.resolve_config(data, {serve_app.ADMIN_KEY_ENV: STRONG_ADMIN_KEY, serve_app.REDIS_URL_ENV: "redis://:p@r:6379/0",
                                          serve_app.TENANT_KEYS_DIR_ENV: str(d)})
    assert cfg.tenants.admin_key_hash == hash_api_key(STRONG_ADMIN_KEY)  # the key itself never enters the config
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
    cfg = serve_app.resolve_config(fleet(tenants=None), {serve_app.ADMIN_KEY_ENV: STRONG_ADMIN_KEY})
    assert cfg.tenants.admin_key_hash == hash_api_key(STRONG_ADMIN_KEY)


@pytest.mark.parametrize("weak", ["fs-admin-k" * 3, "change-me-admin-key-0123456789", "short-key-1234567"])
def test_a_weak_admin_key_refuses_a_non_loopback_host(weak):
    with pytest.raises(ConfigError, match="refusing to serve the admin API on 0.0.0.0") as info:
        serve_app.resolve_config(fleet(), {serve_app.ADMIN_KEY_ENV: weak})
    assert info.value.field == "server.admin_key" and weak not in str(info.value)  # never echo the key
    on_loopback = fleet(server={"host": "127.0.0.1", "port": 8000})
    assert serve_app.resolve_config(on_loopback, {serve_app.ADMIN_KEY_ENV: weak}).tenants.admin_key_hash == hash_api_key(weak)
    admin_apart = fleet(server={"host": "0.0.0.0", "port": 8000, "admin_port": 8001})  # admin_host: loopback
    assert serve_app.resolve_config(admin_apart, {serve_app.ADMIN_KEY_ENV: weak}).server.admin_port == 8001


def test_build_requires_config():
    with pytest.raises(ConfigError, match="args"):
        serve_app.build({}, environ={})
