"""Only the admin key's hash leaves the process that parsed the config (issue 25, item 5)."""

from __future__ import annotations

import json

from fleetserve.application.wiring import cluster_config, tenants_config
from fleetserve.config import parse_config
from fleetserve.tenants.gatekeeper import TenantGatekeeper
from fleetserve.tenants.keys import hash_api_key

KEY = "fs-admin-Q3v9xLk2pR7tW1mZ8yB4nC6dF0hJ5sGaUe"


def config(**tenants):
    data = {"server": {"admin_key": KEY}, "models": [{"name": "m", "checkpoint": "/tmp/m"}]}
    if tenants:
        data["tenants"] = tenants
    return parse_config(data)


def test_the_shipped_config_holds_the_hash_not_the_key():
    for cfg in (config(), config(tenants=[{"id": "a", "tier": "standard"}])):
        shipped = cluster_config(cfg)
        text = json.dumps(shipped.model_dump(mode="json"))
        assert KEY not in text and shipped.server.admin_key is None
        assert shipped.tenants.admin_key_hash == hash_api_key(KEY)
        assert cfg.server.admin_key == KEY  # the caller's config is untouched
        assert tenants_config(shipped).tenants == tenants_config(cfg).tenants


async def test_the_hash_alone_authenticates_the_admin():
    gk = TenantGatekeeper(tenants_config(cluster_config(config())))
    await gk.authenticate_admin("Bearer " + KEY)


def test_build_app_binds_no_plaintext_key():
    from fleetserve.application.build import build_app

    app = build_app(config())
    seen = []

    def walk(node):
        seen.append(json.dumps(node, default=repr))

    ingress = app._bound_deployment
    walk(ingress.init_args[0])
    assert KEY not in seen[0] and hash_api_key(KEY) in seen[0]
