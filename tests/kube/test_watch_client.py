"""The watcher's client side against a local server speaking the Kubernetes watch protocol,
and its drains against a local server standing in for fleetserve's admin API (the real
drain endpoint is issue #23)."""

from __future__ import annotations

import pytest

from fleetserve.kube.drainer import AdminApiDrainer, DrainError, DrainRequest, RayPod
from fleetserve.kube.watcher import NodeWatcher, pod_lister
from tests.kube.conftest import SPOT_ITN, make_node
from tests.kube.fake_apiserver import ApiScript, FakeApiServer

ADMIN_KEY = "fs-admin-test-key-0123456789"
SELECTOR = "app.kubernetes.io/instance=fs,fleetserve.io/component=ray"


def ray_pod(name: str, node: str, ip: str) -> dict:
    return {"metadata": {"name": name, "namespace": "llm", "labels": {"fleetserve.io/component": "ray"}},
            "spec": {"nodeName": node}, "status": {"podIP": ip, "phase": "Running"}}


def core_api(url: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    return client.CoreV1Api(client.ApiClient(cfg))


def drains(script: ApiScript) -> list[tuple[str, dict, dict]]:
    return [(path, headers, body) for method, path, headers, body in script.requests if method == "POST"]


def test_watch_session_drains_through_the_admin_api(watch_session):
    already_cordoned = make_node("worker-gpu-9", unschedulable=True)
    script = ApiScript(
        nodes=[make_node("ip-10-0-3-7.ec2.internal"), already_cordoned],
        list_resource_version="1000",
        watch_events=watch_session,
        pods_by_node={"ip-10-0-3-7.ec2.internal": [ray_pod("fs-raycluster-gpu-spot-abc", "ip-10-0-3-7.ec2.internal", "10.0.3.77")],
                      "worker-gpu-3": [ray_pod("fs-raycluster-gpu-od-xyz", "worker-gpu-3", "10.0.9.3")]},
    )
    with FakeApiServer(script) as server:
        api = core_api(server.url)
        watcher = NodeWatcher(api, AdminApiDrainer(server.url, ADMIN_KEY), pod_lister(api, "llm", SELECTOR))
        watcher.run_once()

    watch_calls = [q for m, p, q, _ in script.requests if p == "/api/v1/nodes" and q.get("watch")]
    assert len(watch_calls) == 1 and watch_calls[0]["resourceVersion"] == "1000"  # watch resumes from the list
    pod_calls = [q for m, p, q, _ in script.requests if p == "/api/v1/namespaces/llm/pods"]
    assert all(q["labelSelector"] == SELECTOR for q in pod_calls)
    sent = drains(script)
    # worker-gpu-9 was cordoned before the watch began, but runs none of our pods: no drain.
    assert [path for path, _, _ in sent] == [
        "/admin/nodes/ip-10-0-3-7.ec2.internal/drain", "/admin/nodes/worker-gpu-3/drain", "/admin/nodes/worker-gpu-3/drain"]
    path, headers, body = sent[0]
    assert headers["authorization"] == f"Bearer {ADMIN_KEY}"
    assert body == {"source": "kubernetes", "reason": "aws-spot-interruption",
                    "signals": ["aws-spot-interruption", "cordoned"], "deadline_s": 120,
                    "pods": [{"name": "fs-raycluster-gpu-spot-abc", "ip": "10.0.3.77"}]}
    # Both are handled for this episode (worker-gpu-9 had nothing to drain; it is cordoned, so none will land there).
    assert watcher.state.drained == {"worker-gpu-3", "worker-gpu-9"}


def test_refused_drain_is_retried_on_the_next_event():
    node = make_node("n1", taints=[SPOT_ITN])
    script = ApiScript(nodes=[node], list_resource_version="5", watch_events=[{"type": "MODIFIED", "object": node}],
                       pods_by_node={"n1": [ray_pod("p", "n1", "10.0.0.1")]}, drain_status=404)
    with FakeApiServer(script) as server:
        api = core_api(server.url)
        watcher = NodeWatcher(api, AdminApiDrainer(server.url, ADMIN_KEY), pod_lister(api, "llm", SELECTOR))
        watcher.run_once()
    assert len(drains(script)) == 2  # the listed node, then again on its watch event
    assert watcher.state.drained == frozenset()


def test_expired_resource_version_relists():
    from kubernetes.client.exceptions import ApiException

    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                        "reason": "Expired", "message": "too old resource version: 5 (100)"}}
    script = ApiScript(nodes=[make_node("n1")], list_resource_version="5", watch_events=[gone])
    slept = []

    class Stop(Exception):
        pass

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 2:
            raise Stop

    with FakeApiServer(script) as server:
        api = core_api(server.url)
        watcher = NodeWatcher(api, AdminApiDrainer(server.url, ADMIN_KEY), pod_lister(api, "llm", SELECTOR))
        with pytest.raises(ApiException):
            watcher.run_once()
        with pytest.raises(Stop):
            watcher.run_forever(sleep)
    assert slept == [1.0, 2.0]  # backoff doubles
    lists = [q for m, p, q, _ in script.requests if p == "/api/v1/nodes" and not q.get("watch")]
    assert len(lists) >= 3  # one per run: every run relists


def test_admin_drainer_errors():
    request = DrainRequest("n/1", "cordoned", ("cordoned",), None, (RayPod("p", "10.0.0.1"),))
    script = ApiScript(nodes=[], list_resource_version="1", watch_events=[], drain_status=500)
    with FakeApiServer(script) as server:
        with pytest.raises(DrainError, match="HTTP 500"):
            AdminApiDrainer(server.url, ADMIN_KEY).drain(request)
    assert drains(script)[0][0] == "/admin/nodes/n%2F1/drain"
    with pytest.raises(DrainError, match="cannot reach"):
        AdminApiDrainer(server.url, ADMIN_KEY, timeout_s=1).drain(request)  # server is down now
