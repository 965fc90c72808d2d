"""Runs the modules that need a multi-node Ray cluster of their own in a child pytest process.

``ray.cluster_utils.Cluster`` cannot start inside a process that already joined the suite's
shared Ray session (``tests/fixtures/ray_serve.py``), so these modules skip there (with that
reason) and run here instead, each in its own interpreter, and this test fails unless every
test in the module passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_CLUSTER_MODULES = [
    "tests/api/test_migration_e2e.py",  # drain and SIGKILL mid-stream on a two-node cluster
    "tests/application/test_spot_placement.py",  # spot / on-demand placement by node resources
    "tests/application/test_spot_routing_e2e.py",  # traffic to the spot twin; Ray DrainNode migrates its streams
]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("module", OWN_CLUSTER_MODULES)
def test_module_in_its_own_process(module):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "ray and slow", "-rs", module],
        cwd=ROOT, env=_fresh_env(), capture_output=True, text=True, timeout=1200,
    )
    tail = (proc.stdout[-4000:] + "\n" + proc.stderr[-2000:]).strip()
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "deselected" not in summary, tail


def _fresh_env() -> dict:
    """This process's environment without the Ray/Serve settings the shared session put there
    (``apply_serve_env`` keeps what is already set: inherited haproxy ports would collide)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
