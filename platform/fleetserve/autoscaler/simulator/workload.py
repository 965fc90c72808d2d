"""Requests and traces: CSV replay (timestamp, tenant class, prompt and output tokens)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Union

from fleetserve.errors import ConfigError

TRACE_COLUMNS = ("timestamp", "tenant_class", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class SimRequest:
    rid: int
    arrival: float  # seconds from the start of the trace
    tenant_class: str
    prompt_tokens: int
    output_tokens: int


def load_trace_csv(path: Union[str, Path]) -> List[SimRequest]:
    """Read a trace; timestamps are seconds (any origin: shifted to start at 0), sorted."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(TRACE_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"trace {path} lacks columns: {', '.join(sorted(missing))}", field="trace")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(
                    (float(row["timestamp"]), row["tenant_class"], int(row["prompt_tokens"]), int(row["output_tokens"]))
                )
            except ValueError as exc:
                raise ConfigError(f"trace {path} line {line}: {exc}", field="trace") from exc
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0] if rows else 0.0
    return [SimRequest(i, t - t0, c, max(1, p), max(1, o)) for i, (t, c, p, o) in enumerate(rows)]


def write_trace_csv(requests: Iterable[SimRequest], path: Union[str, Path]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRACE_COLUMNS)
        for r in requests:
            w.writerow((f"{r.arrival:.6f}", r.tenant_class, r.prompt_tokens, r.output_tokens))
