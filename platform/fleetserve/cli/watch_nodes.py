"""``fleetserve watch-nodes``: the spot watcher (runs in the cluster; the Helm chart deploys it).

Watches Kubernetes Nodes for termination signals (fleetserve.kube.signals) and asks the
platform to drain the Ray pods of this release on a terminating node
(``POST /admin/nodes/{node}/drain``; the server side is issue #23).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("watch-nodes", help="Drain Ray nodes on Kubernetes nodes about to terminate (in-cluster).")
    p.add_argument("--namespace", required=True, help="Namespace of the release's Ray pods.")
    p.add_argument("--pod-selector", required=True, help="Label selector of the release's Ray pods.")
    p.add_argument("--admin-url", required=True, help="fleetserve REST base URL (the release's Service).")
    p.add_argument("--admin-key", default=None, help="Admin key (default: env FLEETSERVE_ADMIN_KEY).")
    p.add_argument("--drain-on-advisory", action="store_true", help="Also drain on advisory signals (rebalance recommendations).")
    p.add_argument("--kubeconfig", default=None, help="Use this kubeconfig instead of the in-cluster service account.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from fleetserve.kube.drainer import AdminApiDrainer
    from fleetserve.kube.watcher import NodeWatcher, pod_lister

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key = args.admin_key or os.environ.get("FLEETSERVE_ADMIN_KEY")
    if not key:
        print("fleetserve watch-nodes: no admin key (--admin-key or FLEETSERVE_ADMIN_KEY)", file=sys.stderr)
        return 2
    if args.kubeconfig:
        config.load_kube_config(args.kubeconfig)
    else:
        config.load_incluster_config()
    api = client.CoreV1Api()
    watcher = NodeWatcher(api, AdminApiDrainer(args.admin_url, key), pod_lister(api, args.namespace, args.pod_selector),
                          drain_on_advisory=args.drain_on_advisory)
    watcher.run_forever(time.sleep)
    return 0
