"""``fleetserve serve [--config FILE] [--address ADDR]``: run the platform.

With no arguments: start an embedded Ray cluster, make the tiny checkpoint if missing,
deploy it with a demo tenant, print the REST/gRPC addresses and the demo keys, serve until
Ctrl-C, then shut everything down. With ``--address`` the app is deployed to a running
cluster instead (``--detach`` leaves it running after the command exits).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

DEFAULT_MODEL_NAME = "tiny-llama"
DEFAULT_CHECKPOINT = Path("~/.cache/fleetserve/models/tiny-llama").expanduser()
READY_TIMEOUT_S = 300.0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="Serve models (no arguments: the tiny model on an embedded Ray cluster).")
    p.add_argument("--config", help="FleetConfig YAML file (see deployments/).")
    p.add_argument("--address", help="Ray cluster to deploy to (e.g. ray://head:10001 or auto); default: embedded.")
    p.add_argument("--host", help="Override server.host.")
    p.add_argument("--port", type=int, help="Override server.port (REST).")
    p.add_argument("--grpc-port", type=int, help="Override server.grpc_port.")
    p.add_argument("--detach", action="store_true", help="With --address: deploy and exit, leaving the app running.")
    p.set_defaults(func=run)


class Progress:
    """One status line, redrawn while we wait (plain lines when not a terminal)."""

    def __init__(self, out=sys.stderr):
        self._out, self._tty = out, out.isatty()
        self._t0 = time.monotonic()
        self._phase = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def phase(self, text: str) -> None:
        self._phase = text
        if not self._tty:
            self._out.write(f"[{time.monotonic() - self._t0:5.1f}s] {text}\n")
            self._out.flush()
        elif self._thread is None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        frames = "|/-\\"
        i = 0
        while not self._stop.wait(0.2):
            self._out.write(f"\r{frames[i % 4]} [{time.monotonic() - self._t0:5.1f}s] {self._phase}\033[K")
            self._out.flush()
            i += 1

    def done(self, text: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end = "\r\033[K" if self._tty else ""
        self._out.write(f"{end}{text} ({time.monotonic() - self._t0:.1f}s)\n")
        self._out.flush()


def default_config(checkpoint: Path):
    from fleetserve.config import parse_config

    threads = max(1, (os.cpu_count() or 2) - 1)
    return parse_config({
        "server": {"demo": True},
        "models": [{
            "name": DEFAULT_MODEL_NAME, "checkpoint": str(checkpoint), "engine": "native",
            "engine_args": {"num_kv_blocks": 1024, "max_num_seqs": 64, "num_threads": threads},
            "resources": {"num_cpus": 1},
        }],
    })


def ensure_tiny_checkpoint(path: Path) -> bool:
    """Make the tiny checkpoint if missing; True when it was made now."""
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return False
    from fleetserve.engine.model.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(path, preset="tiny", arch="llama")
    return True


def run(args: argparse.Namespace) -> int:
    from fleetserve.config import load_config
    from fleetserve.errors import ConfigError

    progress = Progress()
    try:
        if args.config:
            cfg = load_config(args.config)
        else:
            progress.phase(f"checking the tiny checkpoint at {DEFAULT_CHECKPOINT}")
            if ensure_tiny_checkpoint(DEFAULT_CHECKPOINT):
                progress.phase(f"made the tiny checkpoint at {DEFAULT_CHECKPOINT}")
            cfg = default_config(DEFAULT_CHECKPOINT)
    except ConfigError as exc:
        print(f"fleetserve serve: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("grpc_port", args.grpc_port)) if v is not None}
    if overrides:
        cfg.server = cfg.server.model_copy(update=overrides)
    creds = _apply_demo(cfg)

    import ray
    from ray import serve

    from fleetserve.application.build import deploy

    embedded = args.address is None
    progress.phase("starting Ray" if embedded else f"connecting to Ray at {args.address}")
    if embedded:
        from fleetserve.deployments.ray_env import apply_serve_env

        try:
            apply_serve_env(cfg.server)  # inherited by every process of the cluster started below
        except ConfigError as exc:
            print(f"fleetserve serve: {exc}", file=sys.stderr)
            return 2
        # address='local': always a fresh embedded cluster, never one found via RAY_ADDRESS.
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    else:
        ray.init(address=args.address, log_to_driver=False)
    stop = threading.Event()
    try:
        progress.phase("deploying (Serve proxies, ingress, model replicas)")
        deploy(cfg)
        _wait_ready(cfg, progress)
        progress.done("fleetserve is ready")
        _print_banner(cfg, creds, detached=bool(args.detach and not embedded))
        if args.detach and not embedded:
            return 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        print("\nshutting down (draining in-flight requests)...", file=sys.stderr)
        return 0
    finally:
        if embedded:
            serve.shutdown()
            ray.shutdown()
        elif not args.detach:
            serve.delete(cfg.server.app_name)
            from fleetserve.admission.cluster_queue import kill_queue_actors

            kill_queue_actors(cfg.server.app_name)  # the shared fleet queue (scope cluster) is detached


def _apply_demo(cfg):
    """In demo mode, add a fresh demo tenant + admin key; returns the plaintext keys or None."""
    if not cfg.server.demo:
        return None
    from fleetserve.tenants.demo import demo_tenants_config

    tcfg, creds = demo_tenants_config(cfg.tenants)
    cfg.tenants = tcfg
    return creds


def _wait_ready(cfg, progress: Progress) -> None:
    import httpx
    from ray import serve

    base = f"http://{_client_host(cfg.server.host)}:{cfg.server.port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        status = serve.status().applications.get(cfg.server.app_name)
        if status is not None:
            if status.status == "DEPLOY_FAILED":
                raise RuntimeError(f"deployment failed: {status.message}")
            reps = [f"{n}: {d.status}" for n, d in status.deployments.items()]
            progress.phase("waiting for replicas: " + ", ".join(reps))
            if status.status == "RUNNING":
                try:
                    if httpx.get(base + "/health", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
        time.sleep(0.5)
    raise TimeoutError(f"fleetserve did not become ready within {READY_TIMEOUT_S:.0f}s")


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _print_banner(cfg, creds, detached: bool = False) -> None:
    host = _client_host(cfg.server.host)
    from fleetserve.deployments.ray_env import HAPROXY_FLAG

    via = "haproxy" if os.environ.get(HAPROXY_FLAG) == "1" else "Serve's Python proxy; install haproxy for lower latency"
    print(f"  REST (OpenAI) : http://{host}:{cfg.server.port}/v1   (via {via}; docs: /docs, spec: /openapi.json)")
    from fleetserve.deployments.direct_ingress import direct_http_urls

    for url in direct_http_urls(cfg.server.app_name, host):
        print(f"  REST (direct) : {url}/v1   (an ingress replica's own port, without the proxy hop)")
    if cfg.server.grpc_port is not None:
        print(f"  gRPC          : {host}:{cfg.server.grpc_port}   (fleetserve.v1.Inference, reflection on)")
    print(f"  models        : {', '.join(m.name for m in cfg.models)}")
    if creds is not None:
        from fleetserve.tenants.demo import print_demo_credentials

        print_demo_credentials(creds)
        print(f"  try: curl http://{host}:{cfg.server.port}/v1/completions -H 'Authorization: Bearer {creds.api_key}' "
              f"-H 'Content-Type: application/json' -d '{{\"model\": \"{cfg.models[0].name}\", \"prompt\": \"def \", \"max_tokens\": 16}}'")
    if detached:
        print(f"  left running on the cluster; remove with serve.delete({cfg.server.app_name!r}).", flush=True)
    else:
        print("  Ctrl-C to stop.", flush=True)
