"""The Serve tuning flags fleetserve sets before Ray starts."""

from fleetserve.config import ServerConfig
from fleetserve.deployments.ray_env import apply_serve_env, serve_env


def test_throughput_optimized_by_default_and_operator_value_wins():
    assert serve_env(ServerConfig()) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert serve_env(ServerConfig(serve_throughput_optimized=False)) == {}
    env: dict[str, str] = {}
    assert apply_serve_env(ServerConfig(), env) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    explicit = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    assert apply_serve_env(ServerConfig(), explicit) == {} and explicit["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
