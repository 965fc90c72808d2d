"""The metrics listeners' settings from the config: host, ports and who may scrape.

A scraper presents the scrape token (``metrics.scrape_token_hash``) or the admin key; only
their hashes travel to the ingress and the replicas.
"""

from __future__ import annotations

from fleetserve.application.wiring import tenants_config
from fleetserve.config import FleetConfig
from fleetserve.metrics.server import ListenerSettings


def listener_settings(cfg: FleetConfig) -> ListenerSettings:
    m = cfg.metrics
    hashes = tuple(h for h in (m.scrape_token_hash, tenants_config(cfg).admin_key_hash) if h)
    return ListenerSettings(host=m.host, port=m.port, port_range=m.port_range, accepted_hashes=hashes)
