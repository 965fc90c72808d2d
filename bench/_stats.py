"""Percentiles and a bootstrap interval for a ratio of two percentiles (bench/ helpers).

The overload bench's target compares two tail estimates: premium p99 TTFT under load over its
p99 unloaded. With ~100 requests per phase each p99 is about the 2nd-slowest request, so one
run's ratio moves by tens of percent between runs of the same build. ``ratio_interval``
resamples both samples with replacement and reports the spread of the ratio, and how often it
stayed at or under a target, so a single run says how sure its verdict is.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence


def pct(xs: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (``q`` in [0, 1]); None for an empty sample."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def ratio_interval(num: Sequence[float], den: Sequence[float], *, q: float = 0.99, target: float = 2.0,
                   iters: int = 2000, level: float = 0.95, seed: int = 0) -> Optional[dict]:
    """Bootstrap of ``pct(num, q) / pct(den, q)``: each iteration resamples both samples with
    replacement. Returns the point ratio, the central ``level`` interval and the fraction of
    resamples with a ratio at most ``target``; None when either sample is empty."""
    if not num or not den:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(iters):
        a = pct(rng.choices(num, k=len(num)), q)
        b = pct(rng.choices(den, k=len(den)), q)
        ratios.append(a / b)
    ratios.sort()
    tail = (1.0 - level) / 2
    return {
        "ratio": round(pct(num, q) / pct(den, q), 3),
        "lo": round(pct(ratios, tail), 3),
        "hi": round(pct(ratios, 1.0 - tail), 3),
        "level": level,
        "target": target,
        "p_at_most_target": round(sum(r <= target for r in ratios) / iters, 3),
        "n_num": len(num),
        "n_den": len(den),
    }
