"""Fetch Hugging Face checkpoints into a pod's model volume (the chart's init container).

    python -m fleetserve.kube.fetch_models --dest /models [--tokenizer-only] REPO [REPO ...]

Every process that serves a model reads a local directory: the replica loads the weights, and
the ingress loads ``tokenizer.json`` and the chat template to count prompt tokens before
dispatch (api/prompts.py). So a hub id cannot be a checkpoint on the cluster; the chart
downloads each repository into ``<dest>/<repo name>`` instead. Pods that only run the
ingress (the head) fetch the tokenizer files alone (``--tokenizer-only``). A directory that
is already complete is not fetched again (``snapshot_download`` checks each file).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

# What the ingress reads: tokenizer.json, tokenizer_config.json (chat template), config.json,
# generation_config.json, and chat templates shipped as separate files.
TOKENIZER_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model")


def local_dir(dest: Path, repo: str) -> Path:
    """Where ``repo`` lands: ``dest/<last component of the repo id>`` (what values point models at)."""
    return dest / repo.rstrip("/").split("/")[-1]


def fetch(repos: Sequence[str], dest: Path, tokenizer_only: bool, token: Optional[str],
          download: Optional[Callable[..., object]] = None) -> list[Path]:
    """Download each repository; returns the local directories in order."""
    if download is None:
        from huggingface_hub import snapshot_download as download
    patterns = list(TOKENIZER_PATTERNS) if tokenizer_only else None
    dirs = []
    for repo in repos:
        target = local_dir(dest, repo)
        download(repo, local_dir=target, allow_patterns=patterns, token=token)
        dirs.append(target)
    return dirs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetserve.kube.fetch_models", description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="+", help="Hugging Face repository ids (org/name).")
    parser.add_argument("--dest", required=True, type=Path, help="Model volume mount path.")
    parser.add_argument("--tokenizer-only", action="store_true", help="Only the tokenizer and config files (ingress-only pods).")
    args = parser.parse_args(argv)
    for d in fetch(args.repos, args.dest, args.tokenizer_only, os.environ.get("HF_TOKEN") or None):
        print(f"fetched {d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
