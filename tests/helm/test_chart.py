"""The chart as Kubernetes and KubeRay see it: lint, render, validate every object, and read
the embedded Serve config back into fleetserve's own config model."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import pytest
import yaml

from fleetserve.tenants.keys import generate_api_key

from tests.helm.conftest import CHART, NAMESPACE, VALUE_SETS, render, values_args
from tests.helm.tools import run

KUBE_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34")
CRD_DIR = Path(__file__).parent / "crds"
# Objects kubernetes-validate has no schema for, and what checks them instead.
CUSTOM_KINDS = {
    "RayService": "KubeRay CRD schema (tests/helm/crds)",
    "PrometheusRule": "promtool (test_alert_rules.py)",
    "ServiceMonitor": "test_every_pod_and_listener_is_scraped_individually",
    "PodMonitor": "test_every_pod_and_listener_is_scraped_individually",
}


@pytest.fixture(scope="module")
def kubernetes_validate():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    # validate() re-reads its multi-megabyte schema files on every call; reading each once
    # makes the 6-version sweep 7x faster and changes nothing else.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(kv.validate.__globals__, "schema_contents", functools.lru_cache(maxsize=None)(kv.utils.schema_contents))
        yield kv


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm, name):
    proc = run([helm, "lint", "--strict", CHART, "--namespace", NAMESPACE, *values_args(name)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_core_objects_validate(helm, kubernetes_validate, name, version):
    kv = kubernetes_validate
    checked = 0
    for doc in render(helm, name).docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")
        except kv.SchemaNotFoundError:
            pytest.fail(f"{doc['kind']} ({doc['apiVersion']}) has no schema in Kubernetes {version}: add a check for it")
        checked += 1
    assert checked >= 5  # the CPU demo has the fewest: Secret, 2 Services, NetworkPolicy, ConfigMap


def test_every_kind_is_checked(rendered):
    kinds = {d["kind"] for d in rendered.docs}
    assert {"RayService", "Service", "Secret", "NetworkPolicy", "ConfigMap"} <= kinds
    # A custom resource nobody validates would pass silently: every one must be known here.
    crds = {d["kind"] for d in rendered.docs if "." in d["apiVersion"].split("/")[0] and not d["apiVersion"].endswith("k8s.io/v1")}
    assert crds <= set(CUSTOM_KINDS), crds - set(CUSTOM_KINDS)


@functools.lru_cache(maxsize=None)
def crd_schema(filename: str, version: str = "v1") -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the pure-Python loader takes ~30 s on 1 MB
    crd = yaml.load((CRD_DIR / filename).read_text(), Loader=loader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def _validate_openapi(instance, schema):
    import jsonschema

    # The CRDs are OpenAPI v3 schemas; Draft 4 is the JSON Schema dialect they build on
    # (x-kubernetes-* keys are annotations and are ignored).
    jsonschema.Draft4Validator(schema).validate(instance)


def test_rayservice_matches_kuberay_crds(rendered):
    rs = rendered.one("RayService")
    _validate_openapi(rs, crd_schema("ray.io_rayservices.yaml"))
    # The embedded cluster is a RayCluster spec too: the operator creates one from it.
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c"}, "spec": rs["spec"]["rayClusterConfig"]}
    _validate_openapi(cluster, crd_schema("ray.io_rayclusters.yaml"))


def test_crd_check_can_fail(helm):
    import jsonschema

    rs = render(helm, "default").one("RayService")
    broken = yaml.safe_load(yaml.safe_dump(rs))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        _validate_openapi(broken, crd_schema("ray.io_rayservices.yaml"))


def serve_config(rendered) -> dict:
    return yaml.safe_load(rendered.one("RayService")["spec"]["serveConfigV2"])


def test_serve_config_loads_into_fleet_config(rendered, tmp_path):
    from fleetserve.kube import serve_app

    serve = serve_config(rendered)
    (app,) = serve["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    fleet = app["args"]["config"]
    # What the pods provide: the admin key, the Redis URL, the tenants' key hashes.
    keys = tmp_path / "keys"
    keys.mkdir()
    for t in (fleet.get("tenants") or {}).get("tenants", []):
        (keys / t["id"]).write_text("sha256:" + "ab" * 32 + "\n")
    environ = {serve_app.ADMIN_KEY_ENV: generate_api_key("fs-admin-"), serve_app.REDIS_URL_ENV: "redis://:pw@redis:6379/0",
               serve_app.TENANT_KEYS_DIR_ENV: str(keys)}
    cfg = serve_app.resolve_config(fleet, environ)
    assert cfg.tenants.admin_key_hash.startswith("sha256:")
    assert all(t.api_key_hashes == ["sha256:" + "ab" * 32] for t in cfg.tenants.tenants)
    assert serve["http_options"] == {"host": cfg.server.host, "port": cfg.server.port}
    assert app["name"] == cfg.server.app_name and app["route_prefix"] == cfg.server.route_prefix
    if cfg.server.grpc_port is None:
        assert "grpc_options" not in serve
    else:
        from fleetserve.application.build import GRPC_SERVICER_FUNCTION

        assert serve["grpc_options"] == {"port": cfg.server.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]}


def ray_containers(rendered) -> list[dict]:
    spec = rendered.one("RayService")["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_ray_pods_get_the_serve_environment(rendered):
    """The Serve tuning env the pods get is what `fleetserve serve` sets (ray_env.serve_env)."""
    from fleetserve.config import ServerConfig
    from fleetserve.deployments.ray_env import serve_env

    server = ServerConfig.model_validate(serve_config(rendered)["applications"][0]["args"]["config"]["server"])
    expected = serve_env(server, proxy="python" if server.proxy == "python" else "haproxy")
    for c in ray_containers(rendered):
        plain = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        assert {k: plain.get(k) for k in expected} == expected
        secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
        assert "FLEETSERVE_ADMIN_KEY" in secret_refs


@pytest.mark.parametrize("values", [
    ["--set", "fleet.server.admin_key=fs-admin-plaintext-0123456789"],
    ["--set", "fleet.server.demo=true"],
    ["--set-json", 'fleet.tenants={"tenants":[{"id":"a","api_key_hashes":["sha256:' + "0" * 64 + '"]}]}'],
    ["--set", "fleet.tenants.redis_url=redis://:secret@redis:6379/0"],
])
def test_values_refuse_secrets(helm, values):
    proc = run([helm, "template", "x", CHART, *values])
    assert proc.returncode != 0 and "additional properties" in proc.stderr, proc.stderr


def test_rendered_objects_hold_no_key_material(rendered):
    for doc in rendered.docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        assert "sha256:" not in text and "fs-admin-" not in text, f"{doc['kind']}/{doc['metadata']['name']}"


def test_worker_groups_for_spot_and_on_demand(helm):
    rs = render(helm, "multi-node-spot").one("RayService")
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"on-demand-gpu", "spot-gpu"}
    for name, capacity, selector in (("on-demand-gpu", "on_demand", "on-demand"), ("spot-gpu", "spot", "spot")):
        g = groups[name]
        pod = g["template"]["spec"]
        assert g["labels"] == {"fleetserve.io/capacity-type": capacity}  # Ray node label
        assert g["template"]["metadata"]["labels"]["fleetserve.io/capacity-type"] == capacity
        assert pod["nodeSelector"]["karpenter.sh/capacity-type"] == selector
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert (groups["spot-gpu"]["minReplicas"], groups["spot-gpu"]["maxReplicas"]) == (0, 8)
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"  # model replicas go to GPU workers


def test_cpu_demo_runs_on_the_head_alone(helm):
    r = render(helm, "cpu-demo")
    spec = r.one("RayService")["spec"]["rayClusterConfig"]
    assert spec.get("workerGroupSpecs") in (None, [])
    assert "num-gpus" not in spec["headGroupSpec"]["rayStartParams"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith("-cpu")
    assert not r.of_kind("PrometheusRule") and not r.of_kind("ServiceMonitor") and not r.of_kind("StatefulSet")


def test_image_tag_follows_app_version(helm):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for c in ray_containers(render(helm, "default")):
        assert c["image"] == f"ghcr.io/fleetserve/fleetserve:{chart['appVersion']}-gpu"
    import tomllib

    project = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"], "Chart appVersion must be the fleetserve version it runs"


def test_redis_modes(helm):
    internal = render(helm, "default")
    sts = internal.one("StatefulSet")
    script = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert script.splitlines()[0] == "exec redis-server - <<EOF" and "requirepass $REDIS_PASSWORD" in script
    assert 'save ""' in script  # no persistence: no snapshots either
    env = {e["name"]: e for e in ray_containers(internal)[0]["env"]}
    assert env["FLEETSERVE_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@fs-fleetserve-redis:6379/0"
    persistent = render(helm, "gpu-vllm").one("StatefulSet")
    assert persistent["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    external = render(helm, "multi-node-spot")
    assert not external.of_kind("StatefulSet")
    env = {e["name"]: e for e in ray_containers(external)[0]["env"]}
    assert env["FLEETSERVE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "fleetserve-redis", "key": "redis-url"}


def test_network_policy_guards_the_ray_pods(rendered):
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    ray = policies["fs-fleetserve-ray"]["spec"]
    assert ray["podSelector"]["matchLabels"]["fleetserve.io/component"] == "ray"
    release_only = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "fleetserve", "app.kubernetes.io/instance": "fs"}}}
    by_ports = {}
    for rule in ray["ingress"]:
        if "ports" not in rule:
            assert rule["from"] == [release_only]  # all ports (GCS, object transfer, replica link) only within the release
            continue
        by_ports[frozenset(p["port"] for p in rule["ports"])] = rule.get("from")
    serving = {8000, 9000} if any(9000 in ports for ports in by_ports) else {8000}
    monitoring = frozenset({8080, 9464})  # Ray's export; fleetserve's listeners from 9464 (endPort below)
    assert set(by_ports) == {frozenset(serving), frozenset({8265, 52365}), monitoring}
    (listeners,) = [p for rule in ray["ingress"] for p in rule.get("ports", []) if p["port"] == 9464]
    assert listeners["endPort"] == 9464 + 8 - 1
    assert by_ports[frozenset({8265, 52365})][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberay-system"}
    assert by_ports[monitoring][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_spot_watcher_rbac_is_minimal(helm):
    r = render(helm, "multi-node-spot")
    (cluster_role,) = r.of_kind("ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    (role,) = r.of_kind("Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    dep = next(d for d in r.of_kind("Deployment") if d["metadata"]["name"].endswith("spot-watcher"))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["fleetserve", "watch-nodes"] and "--drain-on-advisory" in c["args"]
    from fleetserve.cli.main import parse_args

    contexts = parse_args(c["command"][1:] + c["args"])  # the CLI accepts what the chart passes (raises if not)
    assert contexts[-1].command.name == "watch-nodes" and contexts[-1].params["drain_on_advisory"] is True


def test_every_pod_and_listener_is_scraped_individually(helm):
    """Ray's export per pod through a headless Service; fleetserve's listeners (the ingress and
    each model replica, one port each of the metrics range) per pod through a PodMonitor that
    presents the scrape token from its Secret, never through the load-balanced serve Service."""
    r = render(helm, "multi-node-spot")
    sm, pm = r.one("ServiceMonitor"), r.one("PodMonitor")
    services = {s["metadata"]["name"]: s for s in r.of_kind("Service")}
    ray_metrics = services["fs-fleetserve-metrics"]
    assert ray_metrics["spec"]["clusterIP"] == "None"  # headless: one target per pod, not one behind a VIP
    assert sm["spec"]["selector"]["matchLabels"].items() <= ray_metrics["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["ray-metrics"]
    assert "fs-fleetserve-ingress-metrics" not in services  # the direct-ingress port no longer serves /metrics
    fleet = serve_config(r)["applications"][0]["args"]["config"]
    assert fleet["metrics"] == {"host": "0.0.0.0", "port": 9464, "port_range": 8}
    names = [f"fs-metrics-{i}" for i in range(8)]
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == names
    secret_name = "fs-fleetserve-metrics"
    for e in pm["spec"]["podMetricsEndpoints"]:
        assert e["path"] == "/metrics"
        assert e["authorization"] == {"type": "Bearer", "credentials": {"name": secret_name, "key": "scrape-token"}}
    secret = next(s for s in r.of_kind("Secret") if s["metadata"]["name"] == secret_name)
    assert "scrape-token" in secret["data"]
    spec = r.one("RayService")["spec"]["rayClusterConfig"]
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        pod = group["template"]
        assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        container = pod["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert [ports[n] for n in names] == list(range(9464, 9472))
        env = {e["name"]: e for e in container["env"]}
        assert env["FLEETSERVE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": "scrape-token"}
    from fleetserve.kube.serve_app import resolve_config

    cfg = resolve_config(fleet, {"FLEETSERVE_METRICS_TOKEN": "a-scrape-token-0123456789"})
    assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.scrape_token_hash.startswith("sha256:")


def test_ingress_placement_matches_the_scrape(rendered):
    """One ingress per pod (so it owns the first direct-ingress port), on on-demand capacity only."""
    from ray.serve._private.constants import RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT
    from ray.serve.schema import ServeDeploySchema

    from fleetserve.application.build import INGRESS_DEPLOYMENT

    serve = serve_config(rendered)
    ServeDeploySchema.model_validate(serve)  # what Ray Serve 2.60 accepts as a config file
    (ingress,) = serve["applications"][0]["deployments"]
    assert ingress["name"] == INGRESS_DEPLOYMENT and ingress["max_replicas_per_node"] == 1
    assert ingress["ray_actor_options"] == {"num_cpus": 0, "label_selector": {"fleetserve.io/capacity-type": "on_demand"}}
    spec = rendered.one("RayService")["spec"]["rayClusterConfig"]
    assert spec["headGroupSpec"]["labels"] == {"fleetserve.io/capacity-type": "on_demand"}
    assert RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT == 30000


def test_more_ingress_replicas_than_on_demand_pods_is_refused(helm):
    proc = run([helm, "template", "x", CHART, "--set", "fleet.server.ingress_replicas=3"])
    assert proc.returncode != 0 and "fleet.server.ingress_replicas (3) exceeds" in proc.stderr
    ok = run([helm, "template", "x", CHART, "--set", "fleet.server.ingress_replicas=3", "--set", "workerGroups.onDemand.minReplicas=2",
              "--set", "workerGroups.onDemand.maxReplicas=2"])
    assert ok.returncode == 0, ok.stderr


def test_notes_explain_first_request(helm, tmp_path):
    # `helm template` skips NOTES.txt and `helm install --dry-run` wants a cluster, so a copy of
    # the chart renders the same text into a ConfigMap.
    import shutil

    chart = tmp_path / "fleetserve"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n")
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n    {{- include \"test.notes\" . | nindent 4 }}\n")
    proc = run([helm, "template", "fs", chart, "--namespace", NAMESPACE, "--show-only", "templates/notes.yaml"])
    assert proc.returncode == 0, proc.stderr
    text = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "kubectl -n llm get secret fs-fleetserve-admin -o jsonpath='{.data.admin-key}' | base64 -d" in text
    assert "port-forward svc/fs-fleetserve 8000:8000" in text
    assert "curl -s $FLEETSERVE_URL/v1/chat/completions" in text and '"model":"qwen2.5-1.5b-instruct"' in text


def test_model_download_init_containers(helm):
    spec = render(helm, "default").one("RayService")["spec"]["rayClusterConfig"]
    head_init = spec["headGroupSpec"]["template"]["spec"]["initContainers"][0]
    worker_init = spec["workerGroupSpecs"][0]["template"]["spec"]["initContainers"][0]
    assert head_init["command"] == ["python", "-m", "fleetserve.kube.fetch_models", "--dest", "/models", "--tokenizer-only",
                                    "Qwen/Qwen2.5-1.5B-Instruct"]
    assert worker_init["command"] == ["python", "-m", "fleetserve.kube.fetch_models", "--dest", "/models",
                                      "Qwen/Qwen2.5-1.5B-Instruct"]
    from fleetserve.kube.fetch_models import main  # the module the init container runs

    assert callable(main)
    cpu = render(helm, "cpu-demo").one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "initContainers" not in cpu and all(v["name"] != "models" for v in cpu["volumes"])


def test_model_paths_are_checked(helm, tmp_path):
    hub_id = tmp_path / "hub-id.yaml"
    hub_id.write_text(yaml.safe_dump({"fleet": {"models": [{"name": "m", "checkpoint": "Qwen/Qwen2.5-1.5B-Instruct"}]}}))
    proc = run([helm, "template", "x", CHART, "-f", hub_id])
    assert proc.returncode != 0 and "fleet.models.0.checkpoint" in proc.stderr and "tokenizer.json" in proc.stderr
    # A download no model uses: the default list left behind by an overlay that changed the models.
    unused = tmp_path / "unused.yaml"
    unused.write_text(yaml.safe_dump({"fleet": {"models": [{"name": "m", "checkpoint": "/models/other"}]}}))
    proc = run([helm, "template", "x", CHART, "-f", unused])
    assert proc.returncode != 0 and "no fleet.models[].checkpoint is /models/Qwen2.5-1.5B-Instruct" in proc.stderr


@pytest.mark.parametrize("name", ["default", "multi-node-spot"])
def test_serve_app_builds_from_rendered_config(helm, name):
    """The import path builds the Serve application from the rendered args (binding needs no Ray cluster)."""
    from ray.serve import Application

    from fleetserve.kube import serve_app

    app_cfg = serve_config(render(helm, name))["applications"][0]
    module, _, attr = app_cfg["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    app = builder(app_cfg["args"], environ={serve_app.ADMIN_KEY_ENV: generate_api_key("fs-admin-")})
    assert isinstance(app, Application)
