"""Where every benchmark script writes its JSON (bench/results/ by default)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(results: dict, out: str | Path) -> Path:
    """Write ``results`` as indented JSON to ``out`` (parents created) and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
