"""What the A/B analysis keeps per request and per variant: typed records and their one
flat encoding (field -> number) shared by the in-memory and the Redis store.

A variant is one (model, version). Its totals are counters only (requests, 5xx errors,
latency histogram buckets, feedback sums), so every ingress replica can add to them with
``HINCRBYFLOAT`` and the report reads them back with one ``HGETALL``.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from fleetserve.metrics.names import LATENCY_BUCKETS, TOKEN_LATENCY_BUCKETS

TTFT_BUCKETS = LATENCY_BUCKETS  # upper bounds (s); one more bucket catches everything above
TPOT_BUCKETS = TOKEN_LATENCY_BUCKETS
FIRST_SEEN, LAST_SEEN = "first_seen", "last_seen"


@dataclass(frozen=True)
class ServedRequest:
    """What the platform remembers of a response id: who asked, and which variant answered."""

    request_id: str
    tenant_id: str
    model: str
    version: str
    created: float

    def to_json(self) -> str:
        return json.dumps({"tenant": self.tenant_id, "model": self.model, "version": self.version,
                           "created": self.created})

    @classmethod
    def from_json(cls, request_id: str, raw: str) -> "ServedRequest":
        d = json.loads(raw)
        return cls(request_id, d["tenant"], d["model"], d["version"], float(d["created"]))


@dataclass(frozen=True)
class RequestOutcome:
    """One finished request as stage 7 saw it (``error``: a 5xx or engine error)."""

    served: ServedRequest
    error: bool
    ttft_s: Optional[float] = None
    tpots: tuple[float, ...] = ()
    prompt_lengths: tuple[int, ...] = ()
    output_tokens: int = 0
    first_token: Optional[int] = None

    def increments(self) -> dict[str, float]:
        out = {"requests": 1.0}
        if self.error:
            out["errors"] = 1.0
        if self.ttft_s is not None:
            out[f"ttft:{bisect.bisect_left(TTFT_BUCKETS, self.ttft_s)}"] = 1.0
        for t in self.tpots:
            key = f"tpot:{bisect.bisect_left(TPOT_BUCKETS, t)}"
            out[key] = out.get(key, 0.0) + 1.0
        return out


Outcome = Union[bool, float]


def feedback_increments(outcome: Outcome) -> dict[str, float]:
    """A boolean counts towards the positive-feedback rate; a number towards the mean score."""
    if isinstance(outcome, bool):
        return {"fb_binary": 1.0, "fb_positive": 1.0 if outcome else 0.0}
    return {"fb_numeric": 1.0, "num_sum": float(outcome), "num_sumsq": float(outcome) ** 2}


@dataclass(frozen=True)
class VariantTotals:
    """One variant's counters, decoded."""

    requests: int = 0
    errors: int = 0
    ttft_buckets: tuple[int, ...] = field(default_factory=lambda: (0,) * (len(TTFT_BUCKETS) + 1))
    tpot_buckets: tuple[int, ...] = field(default_factory=lambda: (0,) * (len(TPOT_BUCKETS) + 1))
    feedback_binary: int = 0
    feedback_positive: int = 0
    feedback_numeric: int = 0
    numeric_sum: float = 0.0
    numeric_sumsq: float = 0.0
    first_seen: Optional[float] = None
    last_seen: Optional[float] = None

    @classmethod
    def decode(cls, fields: Mapping[str, Union[str, float]]) -> "VariantTotals":
        f = {k: float(v) for k, v in fields.items()}

        def buckets(prefix: str, n: int) -> tuple[int, ...]:
            return tuple(int(f.get(f"{prefix}:{i}", 0)) for i in range(n + 1))

        return cls(int(f.get("requests", 0)), int(f.get("errors", 0)), buckets("ttft", len(TTFT_BUCKETS)),
                   buckets("tpot", len(TPOT_BUCKETS)), int(f.get("fb_binary", 0)), int(f.get("fb_positive", 0)),
                   int(f.get("fb_numeric", 0)), f.get("num_sum", 0.0), f.get("num_sumsq", 0.0),
                   f.get(FIRST_SEEN), f.get(LAST_SEEN))

    def to_fields(self) -> dict[str, float]:
        """The flat encoding :meth:`decode` reads (to persist a step's starting totals)."""
        out = {"requests": float(self.requests), "errors": float(self.errors),
               "fb_binary": float(self.feedback_binary), "fb_positive": float(self.feedback_positive),
               "fb_numeric": float(self.feedback_numeric), "num_sum": self.numeric_sum, "num_sumsq": self.numeric_sumsq}
        out.update({f"ttft:{i}": float(c) for i, c in enumerate(self.ttft_buckets)})
        out.update({f"tpot:{i}": float(c) for i, c in enumerate(self.tpot_buckets)})
        for name, v in ((FIRST_SEEN, self.first_seen), (LAST_SEEN, self.last_seen)):
            if v is not None:
                out[name] = v
        return out
