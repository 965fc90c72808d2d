"""Distribution drift between the stable and the canary arm: PSI over shared bins.

The population stability index of an actual distribution against an expected one is
``PSI = sum_i (a_i - e_i) ln(a_i / e_i)`` over shared bins, with ``a_i``, ``e_i`` the bin
shares. A bin empty on either side would make the log infinite, so shares are floored at a
small epsilon. Conventional reading: < 0.1 no shift, 0.1-0.2 moderate, > 0.2 significant.

The bins are fixed from the reference (stable) arm, so both arms are counted the same way:
quantile edges for numeric features (prompt length, output length), the most frequent
values plus an "other" bin for categorical ones (first token id). A :class:`Binning`
serialises, so an executor can fix it once per step and count every window against it.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PROMPT_LENGTH = "prompt_length"
OUTPUT_LENGTH = "output_length"
FIRST_TOKEN = "first_token"
DEFAULT_EPSILON = 1e-4


def psi(expected_counts: Sequence[float], actual_counts: Sequence[float], *, epsilon: float = DEFAULT_EPSILON) -> float:
    """PSI of ``actual`` against ``expected``, both counts over the same bins."""
    if len(expected_counts) != len(actual_counts) or not expected_counts:
        raise ValueError(f"counts must cover the same non-empty bins, got {len(expected_counts)} and {len(actual_counts)}")
    e_total, a_total = float(sum(expected_counts)), float(sum(actual_counts))
    if e_total <= 0 or a_total <= 0 or min(expected_counts) < 0 or min(actual_counts) < 0:
        raise ValueError("counts must be non-negative with a positive total on each side")
    total = 0.0
    for e, a in zip(expected_counts, actual_counts):
        pe, pa = max(e / e_total, epsilon), max(a / a_total, epsilon)
        total += (pa - pe) * math.log(pa / pe)
    return total


@dataclass(frozen=True)
class Binning:
    """Shared bins for one feature.

    numeric: interior ``edges`` e_0 < ... < e_k give k + 2 bins ``(-inf, e_0), [e_0, e_1), ...,
    [e_k, inf)``. categorical: one bin per value in ``categories``, then one for any other.
    """

    kind: str
    edges: tuple[float, ...] = ()
    categories: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "categorical"):
            raise ValueError(f"kind must be 'numeric' or 'categorical', got {self.kind!r}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges must be strictly increasing")

    @classmethod
    def numeric(cls, reference: Iterable[float], bins: int = 10) -> "Binning":
        """Quantile edges of ``reference``: about equally many reference values per bin."""
        values = np.asarray(list(reference), dtype=float)
        if bins < 2 or values.size == 0:
            raise ValueError(f"need bins >= 2 and a non-empty reference, got bins={bins}, {values.size} values")
        qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
        return cls("numeric", edges=tuple(sorted(set(float(q) for q in qs))))

    @classmethod
    def categorical(cls, reference: Iterable[int], top_k: int = 20) -> "Binning":
        """The ``top_k`` most frequent reference values (ties by value), plus "other"."""
        counts = Counter(int(v) for v in reference)
        if top_k < 1 or not counts:
            raise ValueError(f"need top_k >= 1 and a non-empty reference, got top_k={top_k}")
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return cls("categorical", categories=tuple(sorted(v for v, _ in top)))

    @property
    def num_bins(self) -> int:
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1

    def counts(self, values: Iterable[float]) -> tuple[int, ...]:
        """How many of ``values`` fall into each bin."""
        out = [0] * self.num_bins
        if self.kind == "numeric":
            for v in values:
                out[bisect.bisect_right(self.edges, float(v))] += 1
        else:
            index = {c: i for i, c in enumerate(self.categories)}
            for v in values:
                out[index.get(int(v), len(self.categories))] += 1
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": list(self.edges), "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Binning":
        return cls(d["kind"], tuple(float(e) for e in d.get("edges", ())), tuple(int(c) for c in d.get("categories", ())))


def default_binnings(
    prompt_lengths: Sequence[int], output_lengths: Sequence[int], first_tokens: Sequence[int]
) -> dict[str, Binning]:
    """Bins for the three drift features, fixed from the stable arm's recent requests."""
    return {
        PROMPT_LENGTH: Binning.numeric(prompt_lengths),
        OUTPUT_LENGTH: Binning.numeric(output_lengths),
        FIRST_TOKEN: Binning.categorical(first_tokens),
    }
