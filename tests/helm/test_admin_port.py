"""``fleet.server.admin_port`` through the chart: the admin API's own cluster-internal Service,
container port and NetworkPolicy rule, the spot watcher and NOTES pointed at it, and a refusal
when some on-demand Ray pod would hold no ingress (the listener lives in the ingress)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helm.conftest import CHART, render
from tests.helm.test_chart import kubernetes_validate, ray_containers, serve_config  # noqa: F401 (fixture)
from tests.helm.tools import run

ADMIN_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
ON = ("--set", "fleet.server.admin_port=8001", "--set", "fleet.server.ingress_replicas=2",
      "--set", "service.type=LoadBalancer", "--set-json", f"networkPolicy.adminFrom=[{json.dumps(ADMIN_PEER)}]")


def services(r) -> dict:
    return {s["metadata"]["name"]: s for s in r.of_kind("Service")}


def watcher_args(r) -> list[str]:
    dep = next(d for d in r.of_kind("Deployment") if d["metadata"]["name"].endswith("spot-watcher"))
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def ray_rules(r) -> list[dict]:
    policy = next(p for p in r.of_kind("NetworkPolicy") if p["metadata"]["name"] == "fs-fleetserve-ray")
    return policy["spec"]["ingress"]


def test_off_by_default(helm):
    r = render(helm, "default")
    assert "fs-fleetserve-admin-api" not in services(r)
    assert serve_config(r)["applications"][0]["args"]["config"]["server"]["admin_port"] is None
    assert all(p["name"] != "admin" for c in ray_containers(r) for p in c["ports"])
    assert "--admin-url=http://fs-fleetserve:8000" in watcher_args(r)
    assert all(8001 not in [p["port"] for p in rule.get("ports", [])] for rule in ray_rules(r))


def test_admin_port_gets_a_cluster_internal_service_and_its_own_policy_rule(helm):
    r = render(helm, "default", *ON)
    svc = services(r)
    admin = svc["fs-fleetserve-admin-api"]["spec"]
    assert svc["fs-fleetserve"]["spec"]["type"] == "LoadBalancer" and admin["type"] == "ClusterIP"
    assert admin["ports"] == [{"name": "admin", "port": 8001, "targetPort": "admin", "appProtocol": "http"}]
    assert admin["selector"]["fleetserve.io/capacity-type"] == "on_demand"
    assert 8001 not in [p["port"] for p in svc["fs-fleetserve"]["spec"]["ports"]]
    # The named target port exists on every pod the Service selects, and on no spot pod.
    spec = r.one("RayService")["spec"]["rayClusterConfig"]
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        pod = group["template"]
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        selected = admin["selector"].items() <= pod["metadata"]["labels"].items()
        assert (ports.get("admin") == 8001) == selected, group.get("groupName", "head")
    fleet = serve_config(r)["applications"][0]["args"]["config"]
    assert fleet["server"]["admin_port"] == 8001 and fleet["server"]["admin_host"] == "0.0.0.0"
    # The REST/gRPC rule (any source) leaves the admin port out; adminFrom alone admits it.
    rules = ray_rules(r)
    by_port = {p["port"]: rule.get("from") for rule in rules for p in rule.get("ports", [])}
    assert by_port[8001] == [ADMIN_PEER] and by_port[8000] is None
    assert [rule for rule in rules if 8001 in [p["port"] for p in rule.get("ports", [])]][0]["ports"] == [
        {"protocol": "TCP", "port": 8001}]
    assert "--admin-url=http://fs-fleetserve-admin-api:8001" in watcher_args(r)
    assert not any("8001" in yaml.safe_dump(i) for i in r.of_kind("Ingress"))


def test_rendered_objects_validate(helm, kubernetes_validate):  # noqa: F811 (fixture)
    for doc in render(helm, "default", *ON).docs:
        if doc["kind"] in ("Service", "NetworkPolicy"):
            kubernetes_validate.validate(doc, "1.34", strict=True)


def test_the_served_config_takes_the_admin_port(helm):
    from fleetserve.kube.serve_app import resolve_config
    from fleetserve.tenants.keys import generate_api_key

    fleet = serve_config(render(helm, "default", *ON))["applications"][0]["args"]["config"]
    cfg = resolve_config(fleet, {"FLEETSERVE_ADMIN_KEY": generate_api_key("fs-admin-")})
    assert cfg.server.admin_port == 8001 and cfg.server.admin_listen_host == "0.0.0.0"
    with pytest.raises(Exception, match="admin"):  # a weak key on the pod interface is refused
        resolve_config(fleet, {"FLEETSERVE_ADMIN_KEY": "changeme-changeme"})


def test_an_on_demand_pod_without_an_ingress_is_refused(helm):
    proc = run([helm, "template", "x", CHART, "--set", "fleet.server.admin_port=8001"])
    assert proc.returncode != 0 and "fleet.server.admin_port needs an ingress on every on-demand Ray pod" in proc.stderr
    assert "set fleet.server.ingress_replicas to 2" in proc.stderr
