"""The top-level config schema: example files validate, errors name the field."""

from pathlib import Path

import pytest

from fleetserve.config import dump_config, load_config, parse_config
from fleetserve.errors import ConfigError

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments"


def minimal(**model_overrides) -> dict:
    model = {"name": "m", "checkpoint": "/tmp/ckpt", **model_overrides}
    return {"models": [model]}


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    cfg = load_config(path)
    assert cfg.models
    for m in cfg.models:
        assert m.max_ongoing_requests >= 32  # sized for streaming, never Serve's default of 5
        if m.engine == "native":
            assert m.native_engine_config().model == m.checkpoint


def test_examples_cover_the_three_shapes():
    names = {p.name for p in DEPLOYMENTS.glob("*.yaml")}
    assert {"cpu-tiny.yaml", "gpu-vllm.yaml", "two-models.yaml"} <= names


def test_defaults_and_round_trip(tmp_path):
    cfg = parse_config(minimal())
    m = cfg.models[0]
    assert (m.engine, m.replicas.num, m.max_ongoing_requests) == ("native", 1, 100)
    f = tmp_path / "c.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f).model_dump() == cfg.model_dump()


@pytest.mark.parametrize(
    "data, field",
    [
        (minimal(replicas={"num": 3, "max": 2}), "models.0.replicas"),
        (minimal(engine="tensorrt"), "models.0.engine"),
        (minimal(engine_args={"block_size": 0}), "models.0.engine_args.block_size"),
        (minimal(engine_args={"no_such_arg": 1}), "models.0.engine_args.no_such_arg"),
        (minimal(resources={"num_gpus": -1}), "models.0.resources.num_gpus"),
        (minimal(engine="vllm", engine_args={"tensor_parallel_size": 2}, resources={"num_gpus": 1}), "models.0"),
        ({"models": [{"name": "m", "checkpoint": "/x"}], "server": {"port": 70000}}, "server.port"),
        ({"models": [{"name": "m", "checkpoint": "/x"}], "server": {"portt": 1}}, "server.portt"),
        ({"models": []}, "models"),
        ({"models": [{"name": "a", "checkpoint": "/x"}, {"name": "a", "checkpoint": "/y"}]}, "<root>"),
        ({"models": [{"name": "m", "checkpoint": "/x"}], "canary": {"tick_s": 0}}, "canary.tick_s"),
        ({"models": [{"name": "m", "checkpoint": "/x"}], "canary": {"steps": [10, 50]}}, "canary.steps"),
        ({"models": [{"name": "m", "checkpoint": "/x"}], "canary": {"stepz": [10, 100]}}, "canary.stepz"),
    ],
)
def test_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    assert ei.value.field == field
    assert field in str(ei.value)


def test_the_canary_section_is_owned_by_the_canary_package():
    cfg = parse_config({"models": [{"name": "m", "checkpoint": "/x"}], "canary": {"steps": [10, 100]}})
    assert cfg.canary.steps == (10, 100) and cfg.canary.enabled is False
    # The rollout executor is wired in: enabling is accepted.
    on = parse_config({"models": [{"name": "m", "checkpoint": "/x"}], "canary": {"enabled": True}})
    assert on.canary.enabled is True


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


STRONG_ADMIN_KEY = "fs-admin-Q3v9xLk2pR7tW1mZ8yB4nC6dF0hJ5sGaUe"


@pytest.mark.parametrize("weak", ["change-me-admin-key-0123456789", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                                  "fs-admin-0123456789abcdef", "Example-Admin-Key-Qw3rty-Zx9v-PlkM-4321"])
def test_a_weak_admin_key_is_refused_beyond_loopback(weak):
    with pytest.raises(ConfigError, match="refusing to serve the admin API on 0.0.0.0") as info:
        parse_config({**minimal(), "server": {"host": "0.0.0.0", "admin_key": weak}})
    assert info.value.field == "server" and weak not in str(info.value)
    for server in ({"host": "127.0.0.1"}, {"host": "::1"}, {"host": "0.0.0.0", "admin_port": 8001}):
        parse_config({**minimal(), "server": {**server, "admin_key": weak}})  # only this machine reaches it
    with pytest.raises(ConfigError, match="refusing"):
        parse_config({**minimal(), "server": {"host": "0.0.0.0", "admin_port": 8001, "admin_host": "10.0.0.5",
                                              "admin_key": weak}})


def test_a_strong_admin_key_serves_on_any_host():
    cfg = parse_config({**minimal(), "server": {"host": "0.0.0.0", "admin_key": STRONG_ADMIN_KEY}})
    assert cfg.server.admin_key == STRONG_ADMIN_KEY and cfg.server.admin_port is None


def test_a_published_placeholder_hash_is_refused_beyond_loopback():
    from fleetserve.exposure import PLACEHOLDER_ADMIN_HASHES

    placeholder = sorted(PLACEHOLDER_ADMIN_HASHES)[0]
    with pytest.raises(ConfigError, match="placeholder"):
        parse_config({**minimal(), "server": {"host": "0.0.0.0"}, "tenants": {"admin_key_hash": placeholder}})
    parse_config({**minimal(), "tenants": {"admin_key_hash": placeholder}})  # loopback: a local experiment


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS.glob("*.yaml")) + sorted(
    (DEPLOYMENTS.parent / "helm" / "fleetserve" / "examples").glob("*.yaml")) + [DEPLOYMENTS.parent / "tenants" / "example.yaml"],
    ids=lambda p: p.name)
def test_example_configs_carry_no_admin_key(path):
    import re

    from fleetserve.exposure import PLACEHOLDER_ADMIN_HASHES

    text = path.read_text()
    assert not re.search(r"^\s*admin_key\s*:", text, re.M), f"{path} carries an admin key"
    assert not re.search(r"fs-admin-[A-Za-z0-9_-]{8,}", text), f"{path} carries an admin key in a comment"
    assert not any(h in text for h in PLACEHOLDER_ADMIN_HASHES)
