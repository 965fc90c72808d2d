from pathlib import Path

import pytest

from fleetserve.autoscaler.config import AutoscalerConfig, load_autoscaler_config
from fleetserve.errors import ConfigError

PROFILES = Path(__file__).resolve().parents[2] / "autoscaler"


@pytest.mark.parametrize("name", ["latency-first", "balanced", "cost-first"])
def test_shipped_profiles_validate(name):
    cfg = load_autoscaler_config(PROFILES / f"{name}.yaml")
    assert cfg.profile == name
    assert cfg.for_model("anything") == cfg.defaults


def test_unknown_field_is_rejected_with_its_path():
    with pytest.raises(ConfigError) as err:
        load_autoscaler_config({"defaults": {"scaling": {"max_replica": 3}}})
    assert err.value.field == "autoscaler.defaults.scaling.max_replica"


def test_bounds_validated():
    with pytest.raises(ConfigError, match="max_replicas"):
        load_autoscaler_config({"defaults": {"scaling": {"min_replicas": 5, "max_replicas": 2}}})


def test_drain_point_must_leave_the_migration_margin():
    with pytest.raises(ConfigError, match="drain_before_deadline_s"):
        load_autoscaler_config({"defaults": {"spot": {"migration_margin_s": 15, "drain_before_deadline_s": 10}}})


def test_every_field_has_a_description():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} lacks a description"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(AutoscalerConfig)
