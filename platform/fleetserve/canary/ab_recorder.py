"""The A/B analysis as the ingress runs it: stage 7 records each finished request per variant,
``POST /v1/feedback`` adds an outcome to the variant that served the response, and the admin
report reads both back.

Nothing here may fail a user's request: a store that is down is logged and the request goes
on (its counters and its feedback id are lost, which the report's counts then show).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from fleetserve.canary.ab_config import ABConfig, FeedbackConfig
from fleetserve.canary.ab_records import Outcome, RequestOutcome, ServedRequest, VariantTotals, feedback_increments
from fleetserve.canary.ab_report import ABReport, build_report
from fleetserve.canary.ab_store import ABStore, MemoryABStore
from fleetserve.canary.drift_monitor import DriftMonitor, DriftSample
from fleetserve.canary.prediction_log import PredictionLogger, PredictionRecord
from fleetserve.errors import ConflictError, NotFoundError
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.store import STORE_ERRORS

log = logging.getLogger(__name__)

ID_PREFIXES = ("chatcmpl-", "cmpl-")  # what the OpenAI responses put before the request id


def request_id_of(response_id: str) -> str:
    """The platform's request id inside a response ``id`` (``chatcmpl-<id>``, ``cmpl-<id>`` or bare)."""
    for p in ID_PREFIXES:
        if response_id.startswith(p):
            return response_id[len(p):]
    return response_id


class ABRecorder:
    """Per-variant counters, feedback, drift and the prediction log behind one object."""

    def __init__(self, store: ABStore, *, metrics: Optional[FleetMetrics] = None,
                 feedback: FeedbackConfig = FeedbackConfig(), ab: ABConfig = ABConfig(),
                 drift: Optional[DriftMonitor] = None, predictions: Optional[PredictionLogger] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self.feedback_config = feedback
        self.ab_config = ab
        self.drift = drift
        self.predictions = predictions
        self._now = clock

    @classmethod
    def in_memory(cls, metrics: Optional[FleetMetrics] = None) -> "ABRecorder":
        return cls(MemoryABStore(), metrics=metrics)

    # ----- stage 3 / 7: the request path ------------------------------------------------

    def wants_prediction(self, request_id: str, version: str, opted_out: bool) -> bool:
        return self.predictions is not None and self.predictions.wants(request_id, version, opted_out)

    async def record(self, outcome: RequestOutcome, stable_version: str,
                     prediction: Optional[PredictionRecord] = None) -> None:
        """Remember the response id, count the variant, observe drift, log a sampled prediction."""
        s = outcome.served
        if self.drift is not None:
            self.drift.observe(s.model, s.version, stable_version,
                               DriftSample(sum(outcome.prompt_lengths), outcome.output_tokens, outcome.first_token))
        try:
            await self.store.remember(s, outcome.increments(), self.feedback_config.retention_s)
        except STORE_ERRORS as exc:
            log.warning("A/B store unreachable (%s); request %s not recorded", type(exc).__name__, s.request_id)
        if prediction is not None:
            await self._log_prediction(prediction)

    async def _log_prediction(self, record: PredictionRecord) -> None:
        try:
            await self.predictions.log(record)
        except (OSError, *STORE_ERRORS) as exc:
            log.warning("prediction log write failed (%s: %s)", type(exc).__name__, exc)
            return
        if self.metrics is not None:
            self.metrics.get(N.PREDICTIONS_LOGGED).labels(record.model, record.version).inc()

    # ----- POST /v1/feedback ----------------------------------------------------------------

    async def feedback(self, tenant_id: str, response_id: str, outcome: Outcome) -> ServedRequest:
        """Add ``outcome`` to the variant that served ``response_id``.

        NotFoundError when the id is unknown, expired *or another tenant's* (the same answer,
        so ids never leak across tenants); ConflictError for a second outcome on one id."""
        served = await self.store.recall(request_id_of(response_id))
        if served is None or served.tenant_id != tenant_id:
            raise NotFoundError(f"No response with id `{response_id}` (unknown, expired, or not this key's).",
                                field="id")
        if not await self.store.claim_feedback(served.request_id, self.feedback_config.retention_s):
            raise ConflictError(f"Feedback for `{response_id}` was already recorded.", field="id")
        await self.store.add(served.model, served.version, feedback_increments(outcome), self._now())
        if self.metrics is not None:
            kind = "numeric" if not isinstance(outcome, bool) else ("positive" if outcome else "negative")
            self.metrics.get(N.FEEDBACK).labels(tenant_id, served.model, served.version, kind).inc()
        return served

    # ----- GET /admin/ab/{model} --------------------------------------------------------------

    async def report(self, model: str, control: str, *, alpha: Optional[float] = None, power: Optional[float] = None,
                     mde: Optional[float] = None) -> ABReport:
        cfg = self.ab_config
        totals = await self.variant_totals(model)
        return build_report(model, control, totals, alpha=cfg.alpha if alpha is None else alpha,
                            power=cfg.power if power is None else power, mde=cfg.mde if mde is None else mde,
                            default_baseline=cfg.baseline_rate, now=self._now())

    async def variant_totals(self, model: str) -> dict[str, VariantTotals]:
        """Every variant's cumulative counters (all ingress replicas when the store is Redis);
        with :func:`fleetserve.canary.ab_window.arm_window`, the rollout guardrails' input."""
        return {v: VariantTotals.decode(fields) for v, fields in (await self.store.totals(model)).items()}

    def drift_histograms(self, model: str, version: str) -> dict[str, tuple[int, ...]]:
        """``version``'s recent drift features over the baseline's bins (``ArmWindow.histograms``)."""
        return self.drift.arm_histograms(model, version) if self.drift is not None else {}

    def drift_report(self, model: str) -> list[dict]:
        return [d.to_dict() for d in self.drift.report(model)] if self.drift is not None else []

    async def close(self) -> None:
        await self.store.close()
        if self.predictions is not None:
            await self.predictions.close()
