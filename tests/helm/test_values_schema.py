"""values.schema.json is generated from fleetserve's pydantic models and must not drift."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from tests.helm.conftest import CHART, EXAMPLES, REPO

SCHEMA = CHART / "values.schema.json"


def test_schema_file_matches_the_generator():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_values_schema
    finally:
        sys.path.pop(0)
    assert SCHEMA.read_text() == gen_values_schema.render(), "stale: run PYTHONPATH=platform python scripts/gen_values_schema.py"


def test_generator_check_mode_fails_on_drift(tmp_path):
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO / "platform"))
    script = REPO / "scripts" / "gen_values_schema.py"
    ok = subprocess.run([sys.executable, script, "--check"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    original = SCHEMA.read_text()
    try:
        SCHEMA.write_text(original.replace('"fleet"', '"fleetz"', 1))
        stale = subprocess.run([sys.executable, script, "--check"], env=env, capture_output=True, text=True)
    finally:
        SCHEMA.write_text(original)
    assert stale.returncode == 1 and "stale" in stale.stderr


@pytest.mark.parametrize("path", [CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_values_files_validate(path):
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load(path.read_text())
    if path.name != "values.yaml":  # examples are overlays: validate them merged onto the defaults
        values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    jsonschema.Draft202012Validator(schema).validate(values)


def test_schema_mirrors_the_fleet_config():
    from fleetserve.config import FleetConfig, ModelConfig

    schema = json.loads(SCHEMA.read_text())
    defs = schema["$defs"]
    assert set(defs["FleetConfig"]["properties"]) == set(FleetConfig.model_fields)
    assert set(defs["ModelConfig"]["properties"]) == set(ModelConfig.model_fields)
    assert "admin_key" not in defs["ServerConfig"]["properties"]
    assert "api_key_hashes" not in defs["TenantSpec"]["properties"]
    assert defs["FleetConfig"]["additionalProperties"] is False


def _merge(base: dict, overlay: dict) -> dict:
    """Helm's value merge: maps merge recursively, everything else replaces."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
