"""Stage 6's safety net: a replica stream that breaks is resumed on another replica, and the
client's stream goes on with no token lost, repeated or changed.

A stream breaks when the replica died (Ray's actor errors, a closed replica link), ended the
request under the caller (an ``abort`` output: its engine process died, a drain timed out),
handed it back (:class:`~fleetserve.errors.RequestMigrated`: a drain in ``migrate`` mode), or
closed the stream without a final output. The ingress then keeps what it already has -- the
token ids it passed on to the client -- and sends a *continuation*: the same request with
``resume_token_ids`` = those tokens, to a replica chosen again by stage 5 (the one that
lost it is avoided). The engine takes them as output already produced (max_tokens,
penalties, grammar, the sampler's position, the detokenizer), so the rest equals the
uninterrupted run for greedy and seeded sampling (the ingress gives every sampled request a
seed, :meth:`InferenceService.build_job`). The output that carried the break is dropped,
tokens and all: the continuation regenerates them.

Usage stays correct because a continuation streams only new tokens, and the counts are
taken from what reaches the client. Resumes are bounded (:class:`ResumePolicy`); past the
bound, or when no replica is left, the client gets a 503 -- never a ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, Optional

from fleetserve.deployments.model_client import ModelClient, Route
from fleetserve.engine.protocol import FINISH_ABORT, GenerateRequest, RequestOutput
from fleetserve.errors import (FleetserveError, RateLimitError, ReplicaStreamLost, RequestMigrated,
                               ServiceUnavailableError)

log = logging.getLogger(__name__)

Reroute = Callable[[frozenset], Route]  # replica ids to avoid -> a fresh stage-5 route
OnResume = Callable[[str, int, str], None]  # (reason, tokens already sent, replica or "")


@dataclass(frozen=True)
class ResumePolicy:
    """How hard the ingress tries to continue one engine request elsewhere.

    ``max_resumes``: continuations per engine request before the client gets the 503;
    ``backoff_s`` doubles per attempt up to ``max_backoff_s`` (a replica that died is only
    seen as gone by Serve after its health check; a migration resumes at once)."""

    max_resumes: int = 4
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def delay(self, attempt: int, migrated: bool) -> float:
        if migrated and attempt == 1:
            return 0.0
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def _typed(exc: BaseException):
    from fleetserve.api.errors import as_fleetserve_error  # errors imports the service, which imports this

    return as_fleetserve_error(exc)


def resumable(exc: BaseException) -> bool:
    """Whether a failed stream may be continued elsewhere: the replica side was lost or
    unavailable (503), not the request itself (400, 429, 500) nor the client (cancel)."""
    from fleetserve.api.errors import UNAVAILABLE_TRANSPORT_ERRORS

    if not isinstance(exc, Exception):
        return False  # CancelledError, GeneratorExit: the client left
    if not isinstance(exc, FleetserveError):  # typed without logging: a bug is logged once, where it is raised
        return type(exc).__name__ in UNAVAILABLE_TRANSPORT_ERRORS
    return isinstance(exc, ServiceUnavailableError) and not isinstance(exc, RateLimitError)


def continuation(request: GenerateRequest, sent: list[int], attempt: int) -> GenerateRequest:
    """``request`` resumed after the tokens in ``sent``; a fresh engine id (the old one may
    still be live where it broke), kept under the job id so job preemption still finds it."""
    return replace(request, request_id=f"{request.request_id}.r{attempt}", resume_token_ids=list(sent))


def _reason(exc: BaseException) -> str:
    return "migrated" if isinstance(exc, RequestMigrated) else "lost"


async def resumable_stream(client: ModelClient, request: GenerateRequest, route: Route, reroute: Reroute,
                           policy: ResumePolicy = ResumePolicy(),
                           on_resume: Optional[OnResume] = None) -> AsyncIterator[RequestOutput]:
    """``client.generate(request, route)``, continued on another replica each time it breaks."""
    sent: list[int] = []
    avoid: set[str] = set()
    current, attempt = request, 0
    first: Optional[BaseException] = None  # the break that started the resumes: what the 503 names
    while True:
        error: BaseException
        try:
            async for out in _one_attempt(client, current, route):
                sent.extend(out.token_ids_delta)
                yield out
                if out.finished:
                    return
            error = ReplicaStreamLost("the replica's stream ended before the request finished")
        except Exception as exc:  # noqa: BLE001 - sorted below: resumed, or raised as it was
            if not resumable(exc):
                raise
            error = _typed(exc)
        replica = getattr(error, "replica", None)
        if replica:
            avoid.add(replica)
        first = first or error
        route, attempt = await _next_route(request, reroute, policy, error, attempt + 1, avoid, first)
        log.warning("resuming %s after %d tokens (%s on %s, attempt %d): %s", request.request_id, len(sent),
                    _reason(error), replica or "?", attempt, error)
        if on_resume is not None:
            on_resume(_reason(error), len(sent), replica or "")
        current = continuation(request, sent, attempt)


async def _one_attempt(client: ModelClient, request: GenerateRequest, route: Route) -> AsyncIterator[RequestOutput]:
    """One replica's outputs; an ``abort`` output (the replica ended the request under us)
    raises instead of being passed on, with whatever tokens it carried."""
    stream = client.generate(request, route)
    try:
        async for out in stream:
            if out.finish_reason == FINISH_ABORT:  # named after the replica it was sent to first
                raise ReplicaStreamLost(f"the replica ended the request (abort: {out.error or 'no reason given'})",
                                        replica=route.links[0].replica if route.links else None)
            yield out
    finally:
        await stream.aclose()  # at once: a broken or left stream frees its replica's work


async def _next_route(request: GenerateRequest, reroute: Reroute, policy: ResumePolicy, error: BaseException,
                      attempt: int, avoid: set, first: BaseException) -> tuple[Route, int]:
    """Wait out the backoff and ask stage 5 again, avoiding the replicas that lost the
    request: (the route, the attempt it is). Raises the 503 once ``max_resumes`` is spent."""
    while True:
        if attempt > policy.max_resumes:
            last = f"; last: {error}" if error is not first else ""
            raise ServiceUnavailableError(
                f"the stream of {request.request_id} broke ({first}) and could not be resumed after "
                f"{policy.max_resumes} attempts{last}", retry_after_s=1.0) from error
        await asyncio.sleep(policy.delay(attempt, isinstance(error, RequestMigrated)))
        try:
            new = reroute(frozenset(avoid))
        except ServiceUnavailableError as exc:  # no replica ready right now: wait and ask again
            error, attempt = exc, attempt + 1
            continue
        links = tuple(t for t in new.links if t.replica not in avoid)
        return (replace(new, links=links) if links != new.links else new), attempt
