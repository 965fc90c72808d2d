"""One replica's capacity curve: decode throughput and TTFT against concurrency.

The default curve is an *assumed* calibration for an 8B-parameter model in bf16 on one
H100-80GB under a vLLM-style continuous-batching engine, with ~1,000-token prompts:
one sequence decodes at ~130 tok/s; aggregate decode throughput saturates towards
~3,600 tok/s at 64 concurrent sequences while per-sequence speed drops to ~56 tok/s;
TTFT grows from ~30 ms alone to ~330 ms at 64 because prefills share steps with decodes.
These are the shapes public vLLM benchmarks report for that class of model and GPU,
rounded; load a measured curve with :func:`load_curve_json` to use your own numbers.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union


@dataclass(frozen=True)
class CurvePoint:
    concurrency: int
    throughput_tok_s: float  # aggregate decode tokens/s over all running sequences
    ttft_s: float  # time to first token for a reference-length prompt at this concurrency


@dataclass(frozen=True)
class CapacityCurve:
    """Piecewise-linear in concurrency; flat beyond the last point."""

    points: Tuple[CurvePoint, ...]
    reference_prompt_tokens: int = 1000
    # Share of TTFT that does not grow with prompt length (scheduling, first decode step).
    fixed_ttft_share: float = 0.3

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("capacity curve needs at least one point")
        cs = [p.concurrency for p in self.points]
        if cs != sorted(cs) or len(set(cs)) != len(cs) or cs[0] < 1:
            raise ValueError("capacity curve concurrencies must be >= 1 and strictly increasing")

    def _interp(self, c: float, attr: str) -> float:
        # The simulator asks for integer concurrencies millions of times: memoise them.
        key = (c, attr)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = self._interp_uncached(c, attr)
        return cache[key]

    def _interp_uncached(self, c: float, attr: str) -> float:
        pts = self.points
        xs = [p.concurrency for p in pts]
        if c <= xs[0]:
            return getattr(pts[0], attr)
        if c >= xs[-1]:
            return getattr(pts[-1], attr)
        i = bisect.bisect_right(xs, c)
        a, b = pts[i - 1], pts[i]
        f = (c - a.concurrency) / (b.concurrency - a.concurrency)
        return getattr(a, attr) + f * (getattr(b, attr) - getattr(a, attr))

    def per_sequence_tok_s(self, concurrency: int) -> float:
        c = max(1, concurrency)
        return self._interp(c, "throughput_tok_s") / c

    def ttft_s(self, concurrency: int, prompt_tokens: int) -> float:
        scale = self.fixed_ttft_share + (1 - self.fixed_ttft_share) * prompt_tokens / self.reference_prompt_tokens
        return self._interp(max(1, concurrency), "ttft_s") * scale

    def service_time_s(self, concurrency: int, prompt_tokens: int, output_tokens: int) -> float:
        """Duration of one request admitted at ``concurrency`` (TTFT plus decode)."""
        return self.ttft_s(concurrency, prompt_tokens) + output_tokens / self.per_sequence_tok_s(concurrency)


DEFAULT_CURVE = CapacityCurve(
    points=(
        CurvePoint(1, 130.0, 0.030),
        CurvePoint(4, 480.0, 0.040),
        CurvePoint(8, 900.0, 0.055),
        CurvePoint(16, 1600.0, 0.085),
        CurvePoint(32, 2600.0, 0.150),
        CurvePoint(48, 3200.0, 0.230),
        CurvePoint(64, 3600.0, 0.330),
    )
)


def load_curve_json(path: Union[str, Path]) -> CapacityCurve:
    """Load ``{"reference_prompt_tokens": N, "points": [{"concurrency", "throughput_tok_s", "ttft_s"}, ...]}``,
    e.g. written from an engine benchmark (``ttft_ms`` is accepted in place of ``ttft_s``)."""
    raw = json.loads(Path(path).read_text())
    points = []
    for p in raw["points"]:
        ttft = p["ttft_s"] if "ttft_s" in p else p["ttft_ms"] / 1000.0
        points.append(CurvePoint(int(p["concurrency"]), float(p["throughput_tok_s"]), float(ttft)))
    return CapacityCurve(
        points=tuple(sorted(points, key=lambda p: p.concurrency)),
        reference_prompt_tokens=int(raw.get("reference_prompt_tokens", 1000)),
        fixed_ttft_share=float(raw.get("fixed_ttft_share", 0.3)),
    )
