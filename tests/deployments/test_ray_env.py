"""The Serve tuning flags fleetserve sets before Ray starts."""

from fleetserve.config import ServerConfig
from fleetserve.deployments.ray_env import apply_serve_env, serve_env


DEFAULT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_worker_niceness": "0"}


def test_defaults_and_operator_value_wins():
    assert serve_env(ServerConfig()) == DEFAULT_ENV
    assert serve_env(ServerConfig(serve_throughput_optimized=False, ray_worker_niceness=None)) == {}
    assert serve_env(ServerConfig(ray_worker_niceness=5))["RAY_worker_niceness"] == "5"
    env: dict[str, str] = {}
    assert apply_serve_env(ServerConfig(), env) == DEFAULT_ENV and env == DEFAULT_ENV
    explicit = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_worker_niceness": "15"}
    assert apply_serve_env(ServerConfig(), explicit) == {} and explicit["RAY_worker_niceness"] == "15"


def test_serving_workers_run_at_the_configured_niceness(serve_app):
    # The session's cluster was started with apply_serve_env's environment: the replica
    # hosting the engine (a Ray worker) must not run at Ray's default niceness of 15.
    import os

    import ray

    @ray.remote(num_cpus=0)
    def worker_niceness() -> int:
        return os.nice(0)

    assert ray.get(worker_niceness.remote(), timeout=60) == 0
