"""The request path of the ingress, as named stages in one order (shared by REST and gRPC).

=================  ============  ===================================================
stage              owner         in -> out
=================  ============  ===================================================
1. authenticate    tenants       API key -> :class:`TenantContext` (the edges call it
                                 before parsing the body, then ``authorize``)
2. quota           tenants       :class:`Job` -> :class:`QuotaTicket`
3. choose version  canary        :class:`Job` -> :class:`Job` on one model version
                                 (the registry's sticky split, or an honoured pin)
4. admission       admission     :class:`AdmissionRequest` -> :class:`Admitted` or None
                                 (fleet queue: classes, fair share, shedding, preemption)
5. choose replica  router        (model, prefix key) -> :class:`Route`, per engine request
6. stream          deployments   (:class:`GenerateRequest`, :class:`Route`) -> outputs
7. account         tenants       tokens and outcome -> quotas settled, usage metered;
                                 the admission slot released, metrics observed,
                                 the variant's outcome counted (canary.ab_recorder:
                                 the A/B report and the rollout guardrails)
=================  ============  ===================================================

:meth:`InferenceService.run` is that list; each stage is a method below calling into the
package that owns it. A request with several prompts or ``n > 1`` fans out at stages 5-6
as one engine request per (prompt, choice) -- choice ``i`` uses ``seed + i`` -- merged by
:mod:`fleetserve.api.fanout`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from dataclasses import replace
from typing import AsyncIterator, Optional

from fleetserve.admission.queues import AdmissionQueues, AdmissionRequest, Admitted
from fleetserve.api.adapters import AdapterCatalog, AdapterEntry
from fleetserve.api.fanout import ChoiceEvent, merge_streams
from fleetserve.api.job import Job, ModelSpec, ServedModel
from fleetserve.api.prompts import PromptRenderer
from fleetserve.api.request_metrics import ChoiceTiming, observe_request, prediction_record, request_outcome
from fleetserve.api.resume import ResumePolicy, resumable_stream
from fleetserve.canary.ab_recorder import ABRecorder
from fleetserve.canary.ab_records import counts_as
from fleetserve.canary.serving import VersionTable
from fleetserve.clock import Clock, SystemClock
from fleetserve.deployments.model_client import ModelClient, Route
from fleetserve.deployments.replica_stats import ReplicaStatus
from fleetserve.engine.protocol import FINISH_ABORT, FINISH_ERROR, GenerateRequest, LoraRef, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import (ContextLengthError, EngineError, FleetserveError, InvalidRequestError,
                               ModelNotFoundError, RateLimitError, ServiceUnavailableError)
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.router.chooser import HandleRoutes, RouteChooser
from fleetserve.tenants.context import Gatekeeper, QuotaTicket, TenantContext

__all__ = ["ChoiceEvent", "InferenceService", "Job", "ModelSpec", "ServedModel"]

OUTCOME_OK, OUTCOME_ERROR, OUTCOME_ABORTED = "ok", "error", "aborted"


class InferenceService:
    def __init__(self, specs: list[ModelSpec], client: ModelClient, gatekeeper: Gatekeeper,
                 metrics: Optional[FleetMetrics] = None, clock: Optional[Clock] = None,
                 admission: Optional[AdmissionQueues] = None, router: Optional[RouteChooser] = None,
                 versions: Optional[VersionTable] = None, ab: Optional[ABRecorder] = None,
                 resume: Optional[ResumePolicy] = None, adapters: Optional[AdapterCatalog] = None):
        """``admission``: the fleet admission queues (None: admit at once); ``router``: the
        replica choice (None: every request through the Serve handle); ``versions``: stage
        3's cached split (None: each model's configured version serves everything); ``ab``: the
        per-variant A/B records, feedback and drift (None: in memory, no prediction log);
        ``resume``: how a broken replica stream is continued elsewhere (api/resume.py);
        ``adapters``: LoRA adapters."""
        self._specs = {s.name: s for s in specs}
        self._client = client
        self.gatekeeper = gatekeeper
        self.admission = admission
        self.router = router or HandleRoutes()
        self.metrics = metrics or FleetMetrics()
        self._clock = clock or SystemClock()
        self.versions = versions or VersionTable({s.name: s.version for s in specs})
        self.ab = ab or ABRecorder.in_memory(self.metrics)
        self._served: dict[str, ServedModel] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self.resume = resume or ResumePolicy()
        self._seeds = random.SystemRandom()
        self.adapters = adapters or AdapterCatalog(self._specs)

    # ----- models ----------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", field="model") from None

    def loaded(self, name: str) -> Optional[ServedModel]:
        """The model if a request has loaded it already (``/v1/models`` shows its limits)."""
        return self._served.get(name)

    def resolve(self, name: str) -> tuple[str, Optional[AdapterEntry]]:
        """A requested model name -> (base model, the LoRA adapter it names or None); 404."""
        entry = None if name in self._specs else self.adapters.find(name)
        if entry is None and name not in self._specs:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", field="model")
        return (name, None) if entry is None else (entry.base, entry)

    async def served(self, name: str) -> ServedModel:
        """The model with its tokenizer and limits (asked once); an adapter's: its base's, carrying it."""
        if name in self._served:
            return self._served[name]
        base, entry = self.resolve(name)
        if entry is not None:
            return replace(await self.served(base), adapter=entry.ref)
        spec = self.spec(name)
        async with self._loading.setdefault(name, asyncio.Lock()):
            if name not in self._served:
                self.router.check(name)
                info = await self._client.model_info(name)
                renderer = await asyncio.to_thread(PromptRenderer.from_checkpoint, spec.checkpoint)
                self._served[name] = ServedModel(spec, info, renderer, int(time.time()))
        return self._served[name]

    def replica_status(self) -> list[ReplicaStatus]:
        return self.router.replica_status()

    # ----- stage 1: authenticate (the edges call these before parsing the body) -----------

    async def authenticate(self, api_key: Optional[str]) -> TenantContext:
        ctx = await self.gatekeeper.authenticate(api_key)
        await self.adapters.refresh_if_due()  # adapters other ingress replicas added (at most every few s)
        return ctx

    def authorize(self, ctx: TenantContext, model: str) -> None:
        """404 for an unknown model, 403 for one (or an adapter) this tenant may not use."""
        base, entry = self.resolve(model)
        self.gatekeeper.authorize_model(ctx, base)
        if entry is not None:
            self.gatekeeper.authorize_adapter(ctx, entry.name)

    # ----- building jobs -----------------------------------------------------------------

    def build_job(self, ctx: TenantContext, model: ServedModel, prompts: list[list[int]], *, n: int,
                  max_tokens: Optional[int], sampling: dict, prompt_field: str = "prompt",
                  user: Optional[str] = None) -> Job:
        """Validate lengths against the context and build the job (raises 400s)."""
        limit = model.info.max_model_len
        longest = max(len(p) for p in prompts)
        if any(len(p) == 0 for p in prompts):
            raise InvalidRequestError("prompt must contain at least one token", field=prompt_field)
        if longest >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens, but the prompt has {longest} tokens.",
                field=prompt_field,
            )
        if max_tokens is None:
            max_tokens = limit - longest
        elif longest + max_tokens > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion).",
                field="max_tokens",
            )
        if sampling.get("seed") is None and sampling.get("temperature", 1.0) != 0.0:
            # Every sampled request gets a seed, so a continuation on another replica draws
            # what this one would have (api/resume.py); below 2^62 leaves room for seed + i.
            sampling = {**sampling, "seed": self._seeds.randrange(2**62)}
        params = SamplingParams(n=1, max_tokens=max_tokens, **sampling)
        return Job(uuid.uuid4().hex, model, ctx, prompts, params, n, self._clock.now(), user=user)

    # ----- the request path --------------------------------------------------------------

    async def run(self, job: Job) -> AsyncIterator[ChoiceEvent]:
        """Stages 2-7 for one job. Consumers must ``aclose()`` it (use contextlib.aclosing)."""
        ticket = await self.reserve_quota(job)  # 2
        job = await self.choose_version(job)  # 3
        admitted = await self.admit(job, ticket)  # 4
        timing = ChoiceTiming(job.num_choices, keep_text=job.log_prediction)
        outcome, status = OUTCOME_ERROR, "500"
        in_flight = self.metrics.get(N.IN_FLIGHT).labels(job.model.spec.name, job.served_version)
        in_flight.inc()
        events: Optional[AsyncIterator[ChoiceEvent]] = None
        finished: set[int] = set()
        try:
            events = self.stream(job)  # 5 + 6 (stage 5 may answer 503: no replica ready)
            async for ev in events:
                self._check_output(ev.output)
                timing.on_output(ev.index, ev.output, self._clock.now())
                if ev.output.finished:
                    finished.add(ev.index)
                yield ev
            _check_complete(job, finished)
            outcome, status = OUTCOME_OK, "200"
        except (asyncio.CancelledError, GeneratorExit):
            outcome, status = OUTCOME_ABORTED, "499"
            raise
        except FleetserveError as exc:
            status = _http_status(exc)
            raise
        except Exception as exc:  # a transport's own error (Ray's, a socket's): typed once, here
            err = _typed(exc)
            status = _http_status(err)
            raise err from exc
        finally:
            if events is not None:
                await events.aclose()  # at once, not when the GC finds it: it cancels the replica's work
            in_flight.dec()
            await asyncio.shield(self.account(job, ticket, admitted, timing, outcome, status))  # 7

    async def reserve_quota(self, job: Job) -> QuotaTicket:
        """Stage 2: the tenant's quotas and size limits (raises 429/400). Quotas are the
        tenant's; metering keys the request by the name called, so an adapter's usage is its
        own (``<model>:<id>``; a bounded, registered set) and not its base model's."""
        max_total = job.params.max_tokens * job.num_choices
        return await self.gatekeeper.reserve_quota(job.ctx, job.model.name, job.request_id, job.prompt_tokens,
                                                   max_total)

    async def choose_version(self, job: Job) -> Job:
        """Stage 3: the model version that serves this job, from the registry's sticky split
        (cached; refreshed at most every few seconds) or an honoured pin. A model with no
        split keeps its configured version."""
        name = job.model.spec.name
        await self.versions.refresh_if_due(name)
        choice = self.versions.choose(name, user=job.user, tenant_id=job.ctx.tenant_id,
                                      pinned=job.pinned_version, may_pin=job.may_pin)
        job.version = choice.version
        job.log_prediction = self.ab.wants_prediction(job.request_id, job.version, job.ctx.prediction_log_opt_out)
        return job

    async def admit(self, job: Job, ticket: QuotaTicket) -> Optional[Admitted]:
        """Stage 4: wait for a slot in the model's fleet queue. A shed or abandoned request
        gives back what stage 2 reserved."""
        if self.admission is None:
            return None
        request = AdmissionRequest(job.model.spec.name, job.request_id, job.ctx.tenant_id, job.ctx.priority,
                                   job.ctx.weight, job.prompt_tokens, job.params.max_tokens * job.num_choices)
        try:
            return await self.admission.admit(request)
        except (RateLimitError, ServiceUnavailableError):
            await self.gatekeeper.release_unserved(ticket, shed=True)
            raise
        except BaseException:
            await asyncio.shield(self.gatekeeper.release_unserved(ticket, shed=False))  # client left while queued
            raise

    def stream(self, job: Job) -> AsyncIterator[ChoiceEvent]:
        """Stages 5 and 6 for every (prompt, choice): a route from the router, then the
        client streams it, resumed on another replica if it breaks; the streams are merged."""
        streams = []
        for p_index, prompt in enumerate(job.prompts):
            route = self.route(job, prompt)
            for i in range(job.n):
                index = p_index * job.n + i
                request = self._engine_request(job, prompt, index, i)
                reroute = (lambda _avoid, prompt=prompt: self.route(job, prompt))  # avoid: applied to its links
                streams.append((index, resumable_stream(self._client, request, route, reroute, self.resume,
                                                        self._count_resume(job))))
        return merge_streams(streams)

    def _count_resume(self, job: Job):
        counter = self.metrics.get(N.STREAM_RESUMES)
        return lambda reason, _sent, _replica: counter.labels(job.model.spec.name, job.served_version, reason).inc()

    def route(self, job: Job, prompt: list[int]) -> Route:
        """Stage 5: where one prompt's engine requests go."""
        return self.router.choose(job.route_model, self.prefix_key(job.model.spec, job.ctx, prompt, job.model.adapter))

    async def account(self, job: Job, ticket: QuotaTicket, admitted: Optional[Admitted], timing: ChoiceTiming,
                      outcome: str, status: str) -> None:
        """Stage 7: release the admission slot, observe metrics, settle quotas and metering."""
        if admitted is not None:
            self.admission.release(admitted, timing.completion_tokens)
        now = self._clock.now()
        observe_request(self.metrics, job.labels, job.arrival, now, timing, status, job.prompt_tokens)
        await self.gatekeeper.complete(ticket, job.prompt_tokens, timing.completion_tokens, outcome)
        if counts_as(status) is not None:  # not a 4xx or a response the client never read (499)
            wall = time.time()  # shared with other replicas through the store: wall clock, not monotonic
            await self.ab.record(request_outcome(job, timing, status, wall), job.model.spec.version,
                                 prediction_record(job, timing, status, wall))

    def record_rejection(self, ctx: Optional[TenantContext], model: str, exc: BaseException) -> None:
        """Count a request refused before it ran (auth, validation, quota)."""
        from fleetserve.api.errors import as_fleetserve_error

        status = _http_status(as_fleetserve_error(exc))
        version = self._specs[model].version if model in self._specs else ""
        tenant = ctx.tenant_id if ctx else ""
        self.metrics.observe_request(tenant=tenant, model=model if model in self._specs else "", version=version,
                                     status=status, prompt_tokens=0, completion_tokens=0)

    # ----- helpers -------------------------------------------------------------------------

    @staticmethod
    def _check_output(out: RequestOutput) -> None:
        """A truncated stream is an error the client sees, never a ``stop``.

        ``abort`` reaches a client still reading only when the replica ended the request
        under it (engine shut down, drain timed out, engine process died): retryable, 503.
        """
        if out.finish_reason == FINISH_ERROR:
            raise EngineError(out.error or "the engine failed on this request")
        if out.finish_reason == FINISH_ABORT:
            why = out.error or "aborted by the replica"
            raise ServiceUnavailableError(f"the request was ended before it finished ({why})", retry_after_s=1.0)

    def _engine_request(self, job: Job, prompt: list[int], index: int, choice: int) -> GenerateRequest:
        params = job.params
        if params.seed is not None and choice:
            params = replace(params, seed=params.seed + choice)
        return GenerateRequest(
            request_id=f"{job.request_id}-{index}",
            params=params,
            prompt_token_ids=prompt,
            priority=job.ctx.priority,
            cache_salt=job.ctx.cache_salt,
            tenant_id=job.ctx.tenant_id,
            arrival_time=job.arrival,
            stream_interval_s=job.ctx.stream_interval_s,
            lora=job.model.adapter,
        )

    @staticmethod
    def prefix_key(spec: ModelSpec, ctx: TenantContext, prompt: list[int],
                   adapter: Optional[LoraRef] = None) -> Optional[str]:
        """Tenant (+ adapter) + the first full prompt blocks, hashed: the router's prefix-affinity key."""
        n_tokens = spec.prefix_affinity_blocks * spec.block_size
        if n_tokens == 0 or len(prompt) < spec.block_size:
            return None
        head = prompt[: min(n_tokens, len(prompt) // spec.block_size * spec.block_size)]
        h = hashlib.blake2b(digest_size=8)
        h.update((ctx.cache_salt or ctx.tenant_id).encode())
        if adapter is not None:
            h.update(b"\1" + adapter.key.encode())
        h.update(b"\0" + b",".join(str(t).encode() for t in head))
        return h.hexdigest()


def _check_complete(job: Job, finished: set[int]) -> None:
    """Every choice's stream must end with its final output; one that just stops (a lost
    transport, an engine that closed the stream) is a truncation, not a success."""
    if len(finished) < job.num_choices:
        missing = sorted(set(range(job.num_choices)) - finished)
        raise ServiceUnavailableError(f"the stream of choice(s) {missing} ended before the request finished",
                                      retry_after_s=1.0)


def _typed(exc: BaseException) -> FleetserveError:
    from fleetserve.api.errors import as_fleetserve_error  # errors imports this module's types

    return as_fleetserve_error(exc)


def _http_status(exc: FleetserveError) -> str:
    from fleetserve.api.errors import mapping_for  # errors imports this module's types

    return str(mapping_for(exc).http_status)
