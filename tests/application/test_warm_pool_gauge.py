"""The ingress's warm-pool gauge counts the standbys it routes around, per model version."""

from __future__ import annotations

from fleetserve.application.wiring import warm_pool_rows
from fleetserve.deployments.replica_stats import ReplicaStatus


def _row(model: str, replica: str, standby: bool) -> ReplicaStatus:
    return ReplicaStatus(model=model, replica=replica, num_waiting=0, num_running=0, kv_usage=0.0, standby=standby)


def test_counts_standbys_per_model_and_keeps_zero_rows():
    rows = warm_pool_rows({"a": "v1", "b": "v3"}, [_row("a", "r1", True), _row("a", "r2", False),
                                                    _row("a", "r3", True), _row("other", "r4", True)])
    assert sorted(rows) == [("a", "v1", 2), ("b", "v3", 0)]


def test_the_gauge_follows_the_rows():
    from fleetserve.metrics.registry import FleetMetrics

    fm = FleetMetrics()
    fm.set_warm_replicas(warm_pool_rows({"a": "v1"}, [_row("a", "r1", True)]))
    assert fm.registry.get_sample_value("fleetserve_warm_replicas", {"model": "a", "version": "v1"}) == 1
    fm.set_warm_replicas(warm_pool_rows({"a": "v1"}, [_row("a", "r1", False)]))
    assert fm.registry.get_sample_value("fleetserve_warm_replicas", {"model": "a", "version": "v1"}) == 0


def test_a_runtime_versions_standbys_count_under_their_own_version():
    rows = warm_pool_rows({"a": "v1"}, [_row("a@v2", "r1", True), _row("a@v2", "r2", False), _row("a", "r3", True),
                                        _row("zz@v2", "r4", True)])
    assert sorted(rows) == [("a", "v1", 1), ("a", "v2", 1)]


def test_replica_rows_name_a_runtime_versions_model_and_version():
    from fleetserve.api.scaling_routes import replica_rows

    rows = replica_rows([_row("a@v2", "r1", True), _row("a", "r2", False)], {"a": "v1"})
    assert [(r["replica"], r["model"], r["version"], r["state"]) for r in rows] == [
        ("r1", "a", "v2", "standby"), ("r2", "a", "v1", "serving")]
