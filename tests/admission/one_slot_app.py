"""The config of a second application with ONE slot fleet-wide (fleet and engine), one batch
and one premium tenant: what the fleet-scheduling e2e tests deploy next to the session app."""

from __future__ import annotations


def one_slot_config(serve_app, app_name: str, route_prefix: str, batch_key: str, premium_key: str, **server):
    """``server``: extra ``server`` fields (e.g. ``ingress_replicas``)."""
    from fleetserve.config import parse_config
    from fleetserve.tenants.keys import hash_api_key

    return parse_config({
        "server": {"host": "127.0.0.1", "port": int(serve_app.base_url.rsplit(":", 1)[1]), "grpc_port": None,
                   "app_name": app_name, "route_prefix": route_prefix, "admin_key": serve_app.admin_key} | server,
        "metrics": {"port": 0},
        "models": [{
            "name": serve_app.model, "checkpoint": serve_app.checkpoint,
            "engine_args": {"num_kv_blocks": 256, "max_num_seqs": 1, "num_threads": 1},
            "resources": {"num_cpus": 0.5}, "max_ongoing_requests": 16, "drain_timeout_s": 5,
        }],
        "tenants": {
            "tenants": [{"id": "bulk", "tier": "batch", "api_key_hashes": [hash_api_key(batch_key)]},
                        {"id": "vip", "tier": "premium", "api_key_hashes": [hash_api_key(premium_key)]}],
            "scheduling": {"max_inflight_per_replica": 1, "max_waiting_per_replica": 0},
        },
    })
