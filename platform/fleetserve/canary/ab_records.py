"""What the A/B analysis keeps per request and per variant: typed records and their one
flat encoding (field -> number) shared by the in-memory and the Redis store.

A variant is one (model, version). Its totals are counters only (requests, 5xx errors,
latency sketch buckets, feedback sums), so every ingress replica can add to them with
``HINCRBYFLOAT`` and the report reads them back with one ``HGETALL``. The same totals feed
the rollout guardrails (:mod:`fleetserve.canary.ab_window`): one recorder per request.

Latencies are ``ttft:<i>`` / ``tpot:<i>`` counters of :class:`fleetserve.canary.window.LatencySketch`
buckets (4 % wide, sparse), fine enough for a 20 % guardrail margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from fleetserve.canary.window import LatencySketch, bucket_of

FIRST_SEEN, LAST_SEEN = "first_seen", "last_seen"
TTFT, TPOT = "ttft", "tpot"  # the counter prefixes of the two latency sketches


def counts_as(status: str) -> Optional[bool]:
    """Whether a finished request counts for its variant, and as a failure: a 5xx (engine
    error, replica gone, truncated stream) failed, a 2xx did not. A 4xx (the client's input,
    its quota, shedding) says nothing about the version and a 499 (the client left) neither:
    None, not counted."""
    if status.startswith("5"):
        return True
    if status.startswith("2"):
        return False
    return None


@dataclass(frozen=True, slots=True)
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
        """Latencies of a failed request are not counted (a fast error is no speed-up)."""
        if self.error:
            return {"requests": 1.0, "errors": 1.0}
        out = {"requests": 1.0}
        if self.ttft_s is not None:
            out[f"{TTFT}:{bucket_of(self.ttft_s)}"] = 1.0
        for t in self.tpots:
            key = f"{TPOT}:{bucket_of(t)}"
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
    ttft: LatencySketch = field(default_factory=LatencySketch)
    tpot: LatencySketch = field(default_factory=LatencySketch)
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
        sketches: dict[str, dict[int, int]] = {TTFT: {}, TPOT: {}}
        for k, v in f.items():
            prefix, _, i = k.partition(":")
            if prefix in sketches and v > 0:
                sketches[prefix][int(i)] = int(v)
        return cls(int(f.get("requests", 0)), int(f.get("errors", 0)), LatencySketch(sketches[TTFT]),
                   LatencySketch(sketches[TPOT]), int(f.get("fb_binary", 0)), int(f.get("fb_positive", 0)),
                   int(f.get("fb_numeric", 0)), f.get("num_sum", 0.0), f.get("num_sumsq", 0.0),
                   f.get(FIRST_SEEN), f.get(LAST_SEEN))

    def to_fields(self) -> dict[str, float]:
        """The flat encoding :meth:`decode` reads (to persist a step's starting totals)."""
        out = {"requests": float(self.requests), "errors": float(self.errors),
               "fb_binary": float(self.feedback_binary), "fb_positive": float(self.feedback_positive),
               "fb_numeric": float(self.feedback_numeric), "num_sum": self.numeric_sum, "num_sumsq": self.numeric_sumsq}
        out.update({f"{TTFT}:{i}": float(c) for i, c in self.ttft.buckets.items()})
        out.update({f"{TPOT}:{i}": float(c) for i, c in self.tpot.buckets.items()})
        for name, v in ((FIRST_SEEN, self.first_seen), (LAST_SEEN, self.last_seen)):
            if v is not None:
                out[name] = v
        return out
