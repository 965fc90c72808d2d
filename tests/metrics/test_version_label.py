"""Every per-request and per-variant series carries the ``version`` label (issue 22: every
metric carries a version label), so an A/B dashboard can split any of them by variant."""

from fleetserve.metrics import names as N

# Tenant metering is billing per (tenant, model) and the fleet queue is per model: a request
# is queued and billed before or regardless of the variant; they stay version-free by design.
VERSION_FREE = set(N.TENANT_METERING)


def test_every_ingress_and_ab_series_has_a_version_label():
    missing = [s.name for s in N.INGRESS if N.VERSION not in s.labels]
    assert missing == []
    assert set(N.AB) <= set(N.INGRESS)
    assert {s for s in N.ALL if N.VERSION not in s.labels} <= VERSION_FREE
