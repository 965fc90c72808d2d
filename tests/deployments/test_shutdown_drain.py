"""A stopping replica in drain mode ``migrate`` migrates only where a continuation can land:
with the whole application going away, or no other replica of its version running, its
requests finish here instead of ending with a 503."""

from __future__ import annotations

from types import SimpleNamespace as NS

from fleetserve.deployments.shutdown_drain import PeerView, peer_view_from_status, shutdown_mode, sibling_deployments


def status(app_status="RUNNING", **deployments):
    """A ``serve.status()`` stand-in: deployment name -> {replica state: count}."""
    deps = {name: NS(replica_states=states) for name, states in deployments.items()}
    return NS(applications={"app": NS(status=NS(value=app_status), deployments=deps)})


def test_mode_falls_back_to_finish_where_nothing_can_take_the_requests():
    assert shutdown_mode("migrate", PeerView(app_deleting=False, running_peers=1)) == "migrate"
    assert shutdown_mode("migrate", PeerView(app_deleting=True, running_peers=3)) == "finish"  # whole app
    assert shutdown_mode("migrate", PeerView(app_deleting=False, running_peers=0)) == "finish"  # last one
    assert shutdown_mode("migrate", None) == "finish"  # Serve's controller did not answer: it is going away
    assert shutdown_mode("finish", PeerView(app_deleting=False, running_peers=5)) == "finish"


def test_peers_count_running_replicas_of_the_version_across_the_spot_twin():
    assert sibling_deployments("model-m--spot") == sibling_deployments("model-m") == ("model-m", "model-m--spot")
    s = status(**{"model-m": {"STOPPING": 1}, "model-m--spot": {"RUNNING": 2, "STARTING": 1},
                  "model-other": {"RUNNING": 4}})
    assert peer_view_from_status(s, "app", "model-m") == PeerView(app_deleting=False, running_peers=2)
    s = status(**{"model-m": {"STOPPING": 2}, "model-other": {"RUNNING": 4}})
    assert peer_view_from_status(s, "app", "model-m") == PeerView(app_deleting=False, running_peers=0)
    assert peer_view_from_status(status("DELETING", **{"model-m": {"RUNNING": 1}}), "app", "model-m").app_deleting
    assert peer_view_from_status(status(), "gone", "model-m") == PeerView(app_deleting=True, running_peers=0)
