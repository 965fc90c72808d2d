"""Online drift per version: each version's recent requests against the model's baseline window.

The baseline of a model is the first ``baseline_size`` requests its stable version serves
(after start, or after :meth:`DriftMonitor.reset_baseline`); the bins of the three features
(:mod:`fleetserve.canary.drift`) are fixed from it. Every version, stable included, keeps its
last ``window_size`` requests; its PSI against the baseline is recomputed every
``refresh_every`` new requests and exported as ``fleetserve_drift_psi{model, version, feature}``.
So stable's PSI says whether traffic itself moved, a canary's whether the canary differs.

State is per ingress replica (no store I/O on the request path); with several replicas each
exports its own gauge for the same series labels, and an alert takes the max.

For the rollout guardrail (:func:`fleetserve.canary.guardrails.evaluate` with
``canary.drift.enabled``) :meth:`DriftMonitor.arm_histograms` gives both arms' counts over
the same baseline bins: ``ArmWindow(histograms=monitor.arm_histograms(model, version))``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from fleetserve.canary.ab_config import DriftMonitorConfig
from fleetserve.canary.drift import FIRST_TOKEN, OUTPUT_LENGTH, PROMPT_LENGTH, Binning, default_binnings, psi

FEATURES = (PROMPT_LENGTH, OUTPUT_LENGTH, FIRST_TOKEN)
PsiSink = Callable[[str, str, str, float], None]  # (model, version, feature, psi)


@dataclass(frozen=True)
class DriftSample:
    """The three features of one finished request (``first_token`` None: no token generated)."""

    prompt_length: int
    output_length: int
    first_token: Optional[int]


@dataclass
class _Window:
    rows: deque = field(default_factory=deque)
    since_refresh: int = 0


@dataclass(frozen=True)
class VersionDrift:
    """One version's PSI per feature against the baseline (empty until it has ``min_samples``)."""

    version: str
    samples: int
    psi: dict[str, float]

    def to_dict(self) -> dict:
        return {"version": self.version, "samples": self.samples, "psi": {k: round(v, 6) for k, v in self.psi.items()}}


class DriftMonitor:
    """Rolling windows per (model, version) and the baseline per model."""

    def __init__(self, config: DriftMonitorConfig, sink: Optional[PsiSink] = None) -> None:
        self._cfg = config
        self._sink = sink
        self._windows: dict[tuple[str, str], _Window] = {}
        self._baseline_rows: dict[str, list[DriftSample]] = {}
        self._bins: dict[str, dict[str, Binning]] = {}
        self._baseline_counts: dict[str, dict[str, tuple[int, ...]]] = {}

    def observe(self, model: str, version: str, stable_version: str, sample: DriftSample) -> None:
        """Add one request; fix the baseline once it is full; refresh the version's gauge when due."""
        if not self._cfg.enabled:
            return
        if version == stable_version and model not in self._bins:
            rows = self._baseline_rows.setdefault(model, [])
            rows.append(sample)
            if len(rows) >= self._cfg.baseline_size:
                self._fix_baseline(model, rows)
        w = self._windows.setdefault((model, version), _Window(deque(maxlen=self._cfg.window_size)))
        w.rows.append(sample)
        w.since_refresh += 1
        if w.since_refresh >= self._cfg.refresh_every and model in self._bins:
            w.since_refresh = 0
            self._export(model, version)

    def reset_baseline(self, model: str) -> None:
        """Start collecting a new baseline from the stable version's next requests."""
        for table in (self._baseline_rows, self._bins, self._baseline_counts):
            table.pop(model, None)

    def has_baseline(self, model: str) -> bool:
        return model in self._bins

    def version_drift(self, model: str, version: str) -> VersionDrift:
        w = self._windows.get((model, version))
        n = len(w.rows) if w else 0
        if w is None or model not in self._bins or n < self._cfg.min_samples:
            return VersionDrift(version, n, {})
        hist = self._histograms(model, w.rows)
        base = self._baseline_counts[model]
        return VersionDrift(version, n, {f: psi(base[f], hist[f]) for f in hist if sum(hist[f]) and sum(base[f])})

    def report(self, model: str) -> list[VersionDrift]:
        return [self.version_drift(model, v) for (m, v) in sorted(self._windows) if m == model]

    def arm_histograms(self, model: str, version: str) -> dict[str, tuple[int, ...]]:
        """``version``'s window counted over the baseline's bins (empty before a baseline)."""
        w = self._windows.get((model, version))
        if w is None or model not in self._bins:
            return {}
        return self._histograms(model, w.rows)

    def _fix_baseline(self, model: str, rows: list[DriftSample]) -> None:
        firsts = [r.first_token for r in rows if r.first_token is not None] or [0]
        bins = default_binnings([r.prompt_length for r in rows], [r.output_length for r in rows], firsts)
        for feature, values in ((PROMPT_LENGTH, [r.prompt_length for r in rows]),
                                (OUTPUT_LENGTH, [r.output_length for r in rows])):
            bins[feature] = _with_top_bin(bins[feature], max(values))
        self._bins[model] = bins
        self._baseline_counts[model] = self._histograms(model, rows)
        self._baseline_rows.pop(model, None)

    def _histograms(self, model: str, rows) -> dict[str, tuple[int, ...]]:
        bins = self._bins[model]
        return {
            PROMPT_LENGTH: bins[PROMPT_LENGTH].counts(r.prompt_length for r in rows),
            OUTPUT_LENGTH: bins[OUTPUT_LENGTH].counts(r.output_length for r in rows),
            FIRST_TOKEN: bins[FIRST_TOKEN].counts(r.first_token for r in rows if r.first_token is not None),
        }

    def _export(self, model: str, version: str) -> None:
        if self._sink is None:
            return
        for feature, value in self.version_drift(model, version).psi.items():
            self._sink(model, version, feature, value)


def _with_top_bin(binning: Binning, baseline_max: int) -> Binning:
    """Lengths are integers: one more edge at ``max + 1`` gives values beyond anything the
    baseline saw a bin of their own. Without it a constant baseline (every output 6 tokens)
    has a single edge, and outputs of 10 tokens would land in the same bin as 6."""
    return Binning("numeric", edges=tuple(sorted(set(binning.edges) | {float(baseline_max + 1)})))
