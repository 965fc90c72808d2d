"""``fleetserve watch-nodes``: the spot watcher (runs in the cluster; the Helm chart deploys it).

Watches Kubernetes Nodes for termination signals (fleetserve.kube.signals) and asks the
platform to drain the Ray pods of this release on a terminating node
(``POST /admin/nodes/{node}/drain``; the server side is issue #23).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import typer

from fleetserve.cli.errors import CLIError


def watch_nodes(
    namespace: str = typer.Option(..., help="Namespace of the release's Ray pods."),
    pod_selector: str = typer.Option(..., help="Label selector of the release's Ray pods."),
    admin_url: str = typer.Option(..., help="fleetserve REST base URL (the release's Service)."),
    admin_key: Optional[str] = typer.Option(None, help="Admin key (default: env FLEETSERVE_ADMIN_KEY)."),
    drain_on_advisory: bool = typer.Option(False, "--drain-on-advisory",
                                           help="Also drain on advisory signals (rebalance recommendations)."),
    kubeconfig: Optional[str] = typer.Option(None, help="Use this kubeconfig instead of the in-cluster service account."),
) -> int:
    """Drain Ray nodes on Kubernetes nodes about to terminate (in-cluster)."""
    from kubernetes import client, config

    from fleetserve.kube.drainer import AdminApiDrainer
    from fleetserve.kube.watcher import NodeWatcher, pod_lister

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key = admin_key or os.environ.get("FLEETSERVE_ADMIN_KEY")
    if not key:
        raise CLIError("no admin key (--admin-key or FLEETSERVE_ADMIN_KEY)", 2, prefix="fleetserve watch-nodes: ")
    if kubeconfig:
        config.load_kube_config(kubeconfig)
    else:
        config.load_incluster_config()
    api = client.CoreV1Api()
    watcher = NodeWatcher(api, AdminApiDrainer(admin_url, key), pod_lister(api, namespace, pod_selector),
                          drain_on_advisory=drain_on_advisory)
    watcher.run_forever(time.sleep)
    return 0
