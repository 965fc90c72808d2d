"""The ``metrics`` section: where each fleetserve process serves its Prometheus metrics."""

from __future__ import annotations

import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class MetricsConfig(BaseModel):
    """Private metrics listeners: never on the tenant-facing REST port (its ``/metrics`` is gone)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "127.0.0.1",
        description=(
            "Interface the metrics listeners bind to: the cluster-internal one (in Kubernetes the chart sets the pod's "
            "IP). A host other than loopback requires a credential: scrape_token_hash or an admin key."
        ),
    )
    port: int = Field(
        9464, ge=0, le=65535,
        description=(
            "First port of the metrics listeners. The ingress and every model replica each take the first free port "
            "of [port, port + port_range) on their node; 0: any free port (tests). /admin/status lists them."
        ),
    )
    port_range: int = Field(
        8, ge=1, le=64, description="How many ports from `port` the processes of one node may take (see `port`)."
    )
    scrape_token_hash: Optional[str] = Field(
        None,
        description=(
            "Hash ('sha256:<hex>', from `fleetserve tenants hash`) of the bearer token Prometheus presents; the admin "
            "key is accepted too. In Kubernetes the chart passes the token from a Secret (FLEETSERVE_METRICS_TOKEN). "
            "With a credential configured every scrape must present one (401 otherwise)."
        ),
    )

    @field_validator("scrape_token_hash")
    @classmethod
    def _hash(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not HASH_RE.match(v):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits (fleetserve tenants hash)")
        return v
