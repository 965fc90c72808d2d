"""The admin drain path's handle calls: pinned to the named replica, and a runtime version
(``model@version``) reached through the resolver, looked up once."""

from __future__ import annotations

import pytest

from fleetserve.deployments.replica_control import HandleReplicaControl
from fleetserve.errors import ModelNotFoundError
from tests.application.test_serve_fleet import Handle


async def test_a_runtime_versions_drain_goes_to_its_own_handle_pinned_to_the_replica():
    stable, version, looked_up = [], [], []

    def resolve(name):
        looked_up.append(name)
        return Handle(version) if name == "m@v2" else None

    control = HandleReplicaControl({"m": Handle(stable)}, resolve=resolve)
    await control.set_draining("m@v2", "r9", True, "migrate")
    await control.set_draining("m@v2", "r9", False)
    assert version == [("set_draining", (True,), {"mode": "migrate", "target_replica": "r9"}),
                       ("set_draining", (False,), {"mode": None, "target_replica": "r9"})]
    assert stable == [] and looked_up == ["m@v2"]
    with pytest.raises(ModelNotFoundError):
        await control.set_draining("m@v3", "r1", True)
