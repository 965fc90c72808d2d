"""Chart fixtures: the real helm binary (session-wide) and rendered manifests per values file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helm.tools import ToolUnavailable, helm_binary, run

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fleetserve"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
# "default" renders values.yaml alone; the others add one example file.
VALUE_SETS = {"default": None, **{p.stem: p for p in EXAMPLES}}
RELEASE = "fs"
NAMESPACE = "llm"


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return helm_binary()
    except ToolUnavailable as exc:
        pytest.skip(f"helm v3 unavailable: {exc}")


def values_args(name: str) -> list[str]:
    path = VALUE_SETS[name]
    return [] if path is None else ["-f", str(path)]


class Rendered:
    """The objects `helm template` produced for one values set, by kind and name."""

    def __init__(self, text: str):
        self.text = text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]


_CACHE: dict[tuple, Rendered] = {}


def render(helm: Path, name: str, *extra: str) -> Rendered:
    key = (name, extra)
    if key not in _CACHE:
        proc = run([helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, *values_args(name), *extra])
        assert proc.returncode == 0, f"helm template ({name}) failed:\n{proc.stderr}"
        _CACHE[key] = Rendered(proc.stdout)
    return _CACHE[key]


@pytest.fixture(params=sorted(VALUE_SETS))
def rendered(request, helm) -> Rendered:
    return render(helm, request.param)
