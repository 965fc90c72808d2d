"""``fleetserve serve [--config FILE] [--address ADDR]``: run the platform.

With no arguments: start an embedded Ray cluster, make the tiny checkpoint if missing,
deploy it with a demo tenant, print the REST/gRPC addresses and the demo keys, serve until
Ctrl-C, then shut everything down. With ``--address`` the app is deployed to a running
cluster instead (``--detach`` leaves it running after the command exits).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from fleetserve.cli.errors import CLIError

DEFAULT_MODEL_NAME = "tiny-llama"
DEFAULT_CHECKPOINT = Path("~/.cache/fleetserve/models/tiny-llama").expanduser()
READY_TIMEOUT_S = 300.0
ADMIN_KEY_ENV = "FLEETSERVE_ADMIN_KEY"  # read by `fleetserve tenants|status` and the Kubernetes entry point too


@dataclass(frozen=True)
class ServeOptions:
    config: Optional[str] = None
    address: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    grpc_port: Optional[int] = None
    detach: bool = False


def serve(
    config: Optional[str] = typer.Option(None, help="FleetConfig YAML file (see deployments/)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to deploy to (e.g. ray://head:10001 or auto); default: embedded."),
    host: Optional[str] = typer.Option(None, help="Override server.host."),
    port: Optional[int] = typer.Option(None, help="Override server.port (REST)."),
    grpc_port: Optional[int] = typer.Option(None, help="Override server.grpc_port."),
    detach: bool = typer.Option(False, "--detach", help="With --address: deploy and exit, leaving the app running."),
) -> int:
    """Serve models (no arguments: the tiny model on an embedded Ray cluster)."""
    return run(ServeOptions(config, address, host, port, grpc_port, detach))


class Progress:
    """A rich spinner with the elapsed time while we wait (plain timestamped lines when
    stderr is not a terminal, e.g. in a pod's log)."""

    def __init__(self, out=None):
        from rich.console import Console

        self._console = Console(file=out, stderr=out is None, highlight=False)
        self._t0 = time.monotonic()
        self._bar = None
        self._task = None

    def phase(self, text: str) -> None:
        if not self._console.is_terminal:
            self._console.out(f"[{time.monotonic() - self._t0:5.1f}s] {text}", highlight=False)
            return
        if self._bar is None:
            from rich.progress import Progress as Bar, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Bar(SpinnerColumn(), TimeElapsedColumn(), TextColumn("{task.description}", markup=False),
                            console=self._console, transient=True)
            self._task = self._bar.add_task(text, total=None)
            self._bar.start()
        self._bar.update(self._task, description=text)

    def done(self, text: str) -> None:
        self.stop()
        self._console.out(f"{text} ({time.monotonic() - self._t0:.1f}s)", highlight=False)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


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


def run(opts: ServeOptions) -> int:
    progress = Progress()
    cfg = _load_config(opts, progress)
    creds = _apply_demo(cfg)

    import ray
    from ray import serve

    embedded = opts.address is None
    progress.phase("starting Ray" if embedded else f"connecting to Ray at {opts.address}")
    _start_ray(cfg, opts.address)
    detach = bool(opts.detach and not embedded)
    try:
        _deploy_and_wait(cfg, progress)
        _print_banner(cfg, creds, detached=detach)
        if detach:
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        print("\nshutting down (draining in-flight requests)...", file=sys.stderr)
        return 0
    finally:
        progress.stop()
        if embedded:
            serve.shutdown()
            ray.shutdown()
        elif not opts.detach:
            serve.delete(cfg.server.app_name)
            from fleetserve.admission.cluster_queue import kill_queue_actors

            kill_queue_actors(cfg.server.app_name)  # the shared fleet queue (scope cluster) is detached


def _load_config(opts: ServeOptions, progress: Progress):
    """The FleetConfig to serve (``--config`` or the tiny demo) with the flags' overrides."""
    from fleetserve.config import load_config
    from fleetserve.errors import ConfigError

    try:
        if opts.config:
            cfg = load_config(opts.config)
        else:
            progress.phase(f"checking the tiny checkpoint at {DEFAULT_CHECKPOINT}")
            if ensure_tiny_checkpoint(DEFAULT_CHECKPOINT):
                progress.phase(f"made the tiny checkpoint at {DEFAULT_CHECKPOINT}")
            cfg = default_config(DEFAULT_CHECKPOINT)
    except ConfigError as exc:
        raise CLIError(str(exc), 2, prefix="fleetserve serve: ") from exc
    overrides = {k: v for k, v in (("host", opts.host), ("port", opts.port), ("grpc_port", opts.grpc_port)) if v is not None}
    if cfg.server.admin_key is None and not cfg.server.demo and os.environ.get(ADMIN_KEY_ENV):
        overrides["admin_key"] = os.environ[ADMIN_KEY_ENV]  # keeps the key out of the YAML file
    if overrides:
        cfg.server = _server_with(cfg, overrides)
    return cfg


def _server_with(cfg, overrides: dict):
    """``cfg.server`` with ``overrides``, validated again: a ``--host 0.0.0.0`` must meet the
    same admin key rules as a host written in the file."""
    from pydantic import ValidationError

    from fleetserve.config import ServerConfig, _config_error

    try:
        return ServerConfig.model_validate({**cfg.server.model_dump(), **overrides})
    except ValidationError as exc:
        raise CLIError(str(_config_error(exc, ("server",))), 2, prefix="fleetserve serve: ") from None


def _start_ray(cfg, address: Optional[str]) -> None:
    import ray

    from fleetserve.errors import ConfigError

    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return
    from fleetserve.deployments.ray_env import apply_serve_env

    try:
        apply_serve_env(cfg.server)  # inherited by every process of the cluster started below
    except ConfigError as exc:
        raise CLIError(str(exc), 2, prefix="fleetserve serve: ") from exc
    # address='local': always a fresh embedded cluster, never one found via RAY_ADDRESS.
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
             configure_logging=False)


def _deploy_and_wait(cfg, progress: Progress) -> None:
    """Deploy and wait until /health answers; a failure is one line (exit code 1), not a traceback."""
    from fleetserve.application.build import deploy

    try:
        progress.phase("deploying (Serve proxies, ingress, model replicas)")
        deploy(cfg)
        _wait_ready(cfg, progress)
    except Exception as exc:  # Ray/Serve raise many types here; the user needs the message, not the stack
        progress.stop()
        raise CLIError(f"{type(exc).__name__}: {exc}", 1, prefix="fleetserve serve: deploy failed: ") from exc
    progress.done("fleetserve is ready")


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
    print(f"  metrics       : http://{cfg.metrics.host}:{cfg.metrics.port}/metrics and up (private; Bearer admin key or "
          "scrape token; /admin/status lists each ingress's and replica's)")
    if creds is not None:
        from fleetserve.tenants.demo import print_demo_credentials

        print_demo_credentials(creds)
        print(f"  try: curl http://{host}:{cfg.server.port}/v1/completions -H \"Authorization: Bearer $DEMO_KEY\" "
              f"-H 'Content-Type: application/json' -d '{{\"model\": \"{cfg.models[0].name}\", \"prompt\": \"def \", \"max_tokens\": 16}}'")
    if detached:
        print(f"  left running on the cluster; remove with serve.delete({cfg.server.app_name!r}).", flush=True)
    else:
        print("  Ctrl-C to stop.", flush=True)
