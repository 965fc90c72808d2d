"""The transport-independent core of the ingress, shared by REST and gRPC.

One API request becomes a :class:`Job`: tokenized prompts, validated sampling params and
the caller's tenant. :meth:`InferenceService.run` admits it through the Gatekeeper, fans it
out as one engine request per (prompt, choice) -- choice ``i`` uses ``seed + i`` -- merges
the streams, records metrics and calls ``Gatekeeper.complete`` exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

from fleetserve.api.model_client import ModelClient
from fleetserve.api.prompts import PromptRenderer
from fleetserve.clock import Clock, SystemClock
from fleetserve.engine.process.pacing import merge_outputs
from fleetserve.engine.protocol import FINISH_ERROR, GenerateRequest, ModelInfo, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import ContextLengthError, EngineError, FleetserveError, InvalidRequestError, ModelNotFoundError
from fleetserve.metrics import names as N
from fleetserve.metrics.registry import FleetMetrics
from fleetserve.tenants.context import Gatekeeper, TenantContext

OUTCOME_OK, OUTCOME_ERROR, OUTCOME_ABORTED = "ok", "error", "aborted"


@dataclass(frozen=True)
class ModelSpec:
    """What the ingress knows about a served model before it first talks to a replica."""

    name: str
    checkpoint: str
    version: str = "v1"
    prefix_affinity_blocks: int = 2
    block_size: int = 16


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    info: ModelInfo
    renderer: PromptRenderer
    created: int


@dataclass
class Job:
    """One admitted-to-be API request, ready to fan out."""

    request_id: str
    model: ServedModel
    ctx: TenantContext
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    arrival: float
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n


@dataclass
class ChoiceEvent:
    """An incremental output of choice ``index`` (= prompt_index * n + i)."""

    index: int
    output: RequestOutput


class InferenceService:
    def __init__(self, specs: list[ModelSpec], client: ModelClient, gatekeeper: Gatekeeper,
                 metrics: Optional[FleetMetrics] = None, clock: Optional[Clock] = None):
        self._specs = {s.name: s for s in specs}
        self._client = client
        self.gatekeeper = gatekeeper
        self.metrics = metrics or FleetMetrics()
        self._clock = clock or SystemClock()
        self._served: dict[str, ServedModel] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    @property
    def client(self) -> ModelClient:
        return self._client

    def model_names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", field="model") from None

    async def served(self, name: str) -> ServedModel:
        """The model with its tokenizer and limits (asks a replica once, then cached)."""
        if name in self._served:
            return self._served[name]
        spec = self.spec(name)
        async with self._loading.setdefault(name, asyncio.Lock()):
            if name not in self._served:
                info = await self._client.model_info(name)
                renderer = await asyncio.to_thread(PromptRenderer.from_checkpoint, spec.checkpoint)
                self._served[name] = ServedModel(spec, info, renderer, int(time.time()))
        return self._served[name]

    # ----- building jobs -------------------------------------------------------------

    def build_job(self, ctx: TenantContext, model: ServedModel, prompts: list[list[int]], *, n: int,
                  max_tokens: Optional[int], sampling: dict, prompt_field: str = "prompt") -> Job:
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
        params = SamplingParams(n=1, max_tokens=max_tokens, **sampling)
        return Job(uuid.uuid4().hex, model, ctx, prompts, params, n, self._clock.now())

    # ----- running jobs --------------------------------------------------------------

    async def run(self, job: Job) -> AsyncIterator[ChoiceEvent]:
        """Admit, fan out, merge. Consumers must ``aclose()`` it (use contextlib.aclosing)."""
        spec = job.model.spec
        labels = dict(tenant=job.ctx.tenant_id, model=spec.name, version=spec.version)
        max_total = job.params.max_tokens * job.num_choices
        admission = await self.gatekeeper.admit(job.ctx, spec.name, job.request_id, job.prompt_tokens, max_total)
        in_flight = self.metrics.get(N.IN_FLIGHT).labels(spec.name, spec.version)
        in_flight.inc()
        completion_tokens, outcome, status = 0, OUTCOME_ERROR, "500"
        timing = _ChoiceTiming(job.num_choices)
        merged = self._merged(job)
        try:
            async for ev in merged:
                if ev.output.finish_reason == FINISH_ERROR:
                    raise EngineError(ev.output.error or "the engine failed on this request")
                n_new = len(ev.output.token_ids_delta)
                if n_new:
                    completion_tokens += n_new
                    timing.on_tokens(ev.index, n_new, self._clock.now())
                yield ev
            outcome, status = OUTCOME_OK, "200"
        except (asyncio.CancelledError, GeneratorExit):
            outcome, status = OUTCOME_ABORTED, "499"
            raise
        except FleetserveError as exc:
            from fleetserve.api.errors import mapping_for

            status = str(mapping_for(exc).http_status)
            raise
        finally:
            await merged.aclose()  # at once, not when the GC finds it: it cancels the replica's work
            in_flight.dec()
            self._observe(job, labels, timing, status, completion_tokens)
            await asyncio.shield(self.gatekeeper.complete(admission, job.prompt_tokens, completion_tokens, outcome))

    def record_rejection(self, ctx: Optional[TenantContext], model: str, exc: BaseException) -> None:
        """Count a request refused before it ran (auth, validation, quota)."""
        from fleetserve.api.errors import as_fleetserve_error, mapping_for

        status = str(mapping_for(as_fleetserve_error(exc)).http_status)
        version = self._specs[model].version if model in self._specs else ""
        tenant = ctx.tenant_id if ctx else ""
        self.metrics.observe_request(tenant=tenant, model=model if model in self._specs else "", version=version,
                                     status=status, prompt_tokens=0, completion_tokens=0)

    def _observe(self, job: Job, labels: dict, timing: "_ChoiceTiming", status: str, completion_tokens: int) -> None:
        m = self.metrics
        m.observe_request(status=status, prompt_tokens=job.prompt_tokens, completion_tokens=completion_tokens, **labels)
        now = self._clock.now()
        if timing.first is not None:
            m.observe_latency(N.TTFT, timing.first - job.arrival, **labels)
            m.observe_latency(N.E2E, now - job.arrival, **labels)
        for tpot in timing.tpots():
            m.observe_latency(N.TPOT, tpot, **labels)

    async def _merged(self, job: Job) -> AsyncIterator[ChoiceEvent]:
        if len(job.prompts) == 1 and job.n == 1:  # one stream: no pump task and queue in between
            prompt = job.prompts[0]
            stream = self._client.generate(job.model.spec.name, self._engine_request(job, prompt, 0, 0),
                                           self.prefix_key(job.model.spec, job.ctx, prompt))
            try:
                async for out in stream:
                    yield ChoiceEvent(0, out)
            finally:
                await stream.aclose()  # a consumer that left early cancels the request now
            return
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(index: int, req: GenerateRequest, prefix_key: Optional[str]) -> None:
            try:
                async for out in self._client.generate(job.model.spec.name, req, prefix_key):
                    await queue.put(ChoiceEvent(index, out))
                await queue.put(done)
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                await queue.put(exc)

        tasks = []
        for p_index, prompt in enumerate(job.prompts):
            key = self.prefix_key(job.model.spec, job.ctx, prompt)
            for i in range(job.n):
                index = p_index * job.n + i
                req = self._engine_request(job, prompt, index, i)
                tasks.append(asyncio.create_task(pump(index, req, key)))
        remaining = len(tasks)
        try:
            while remaining:
                # Take everything that arrived while the consumer was busy and send it as
                # one event per choice: each SSE event then carries all tokens ready now.
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                pending: dict[int, list[RequestOutput]] = {}
                error: Optional[BaseException] = None
                for item in items:
                    if item is done:
                        remaining -= 1
                    elif isinstance(item, BaseException):
                        error = item
                        break
                    else:
                        pending.setdefault(item.index, []).append(item.output)
                for index, outs in pending.items():
                    yield ChoiceEvent(index, merge_outputs(outs))
                if error is not None:
                    raise error
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _engine_request(self, job: Job, prompt: list[int], index: int, choice: int) -> GenerateRequest:
        params = job.params
        if params.seed is not None and choice:
            from dataclasses import replace

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
        )

    @staticmethod
    def prefix_key(spec: ModelSpec, ctx: TenantContext, prompt: list[int]) -> Optional[str]:
        """Tenant + the first full prompt blocks, hashed: the router's prefix-affinity key."""
        n_tokens = spec.prefix_affinity_blocks * spec.block_size
        if n_tokens == 0 or len(prompt) < spec.block_size:
            return None
        head = prompt[: min(n_tokens, len(prompt) // spec.block_size * spec.block_size)]
        h = hashlib.blake2b(digest_size=8)
        h.update((ctx.cache_salt or ctx.tenant_id).encode())
        h.update(b"\0" + b",".join(str(t).encode() for t in head))
        return h.hexdigest()


class _ChoiceTiming:
    """First/last token times and token counts per choice (for TTFT and TPOT)."""

    def __init__(self, n: int):
        self.first: Optional[float] = None
        self._first = [None] * n
        self._last = [None] * n
        self._count = [0] * n

    def on_tokens(self, index: int, n_new: int, now: float) -> None:
        if self._first[index] is None:
            self._first[index] = now
            if self.first is None:
                self.first = now
        self._last[index] = now
        self._count[index] += n_new

    def tpots(self) -> list[float]:
        out = []
        for f, l, c in zip(self._first, self._last, self._count):
            if f is not None and c > 1:
                out.append((l - f) / (c - 1))
        return out
