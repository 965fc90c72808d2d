"""``EngineFront``: the event-loop half of the native engine, shared by its two transports.

The native engine is a step loop (scheduler, model, sampler) driven by one step thread,
plus this front on the caller's event loop: per-request output queues, stream pacing, and
the protocol's control calls. The step loop runs either in a thread of the same process
(:class:`fleetserve.engine.process.async_engine.AsyncEngine`) or in a child process
(:class:`fleetserve.engine.process.process_engine.ProcessEngine`); a subclass supplies the transport:

- ``start()``, ``_running()``: bring the step loop up; whether it is alive;
- ``_enqueue_add(request)``: hand a new request to the loop; resolves once the loop took it
  (raising the loop's validation error, before the stream yields anything);
- ``_call_op(name, *args)``: run an engine-state operation between steps (the loop's
  ``_op_<name>``) and return its result;
- ``_abort_soon(rid)``: fire-and-forget abort of a stream whose consumer went away.

The loop hands outputs back through ``_dispatch`` and says it went idle through
``_wake_idle_waiters``, both on the event loop.

Streams are paced by ``GenerateRequest.stream_interval_s``: after a request's first output,
the next one is handed out when that interval has passed, merging every token produced
meanwhile (no token lost or repeated), or at once when the request finishes, so neither the
first nor the last token waits. Every output costs a Ray object, an SSE event and a proxy
message downstream; pacing bounds that cost per stream instead of paying it per step.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fleetserve.engine.process.pacing import drain_merged
from fleetserve.engine.protocol import EngineCapabilities, GenerateRequest, LoraRef, RequestOutput
from fleetserve.engine.tokenizer import Tokenizer
from fleetserve.errors import InvalidRequestError, ServiceUnavailableError


# Both transports pace streams (stream_interval_s), preempt and sleep; LoRA when configured.
NATIVE_CAPABILITIES = EngineCapabilities(paces_streams=True, supports_preempt=True, supports_sleep=True)
NATIVE_LORA_CAPABILITIES = EngineCapabilities(paces_streams=True, supports_preempt=True, supports_sleep=True,
                                              supports_lora=True)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class EngineFront:
    """Streams, pacing and control calls of the native engine (see the module docstring)."""

    def __init__(self) -> None:
        self._streams: dict[str, asyncio.Queue] = {}  # touched on the event loop only
        self._finished: set[str] = set()  # streams whose final output is queued (event loop only)
        self._pacers: dict[str, asyncio.Future] = {}  # streams waiting out their interval
        self._idle_waiters: list[asyncio.Event] = []
        self._stopping = False
        self._sleeping = False
        self._draining = False

    def capabilities(self) -> EngineCapabilities:
        return NATIVE_LORA_CAPABILITIES if self.config.enable_lora else NATIVE_CAPABILITIES

    # ---------------------------------------------------------------- LoRA adapters
    async def add_adapter(self, ref: LoraRef) -> dict:
        """Load ``ref`` into a slot of the step loop's runner now (validates it)."""
        await self.start()
        return await self._call_op("add_adapter", ref)

    async def remove_adapter(self, name: str) -> int:
        await self.start()
        return await self._call_op("remove_adapter", name)

    async def list_adapters(self) -> list[dict]:
        await self.start()
        return await self._call_op("list_adapters")

    # ---------------------------------------------------------------- transport (subclass)
    async def start(self) -> None:
        raise NotImplementedError

    def _running(self) -> bool:
        raise NotImplementedError

    async def _enqueue_add(self, request: GenerateRequest) -> None:
        raise NotImplementedError

    async def _call_op(self, name: str, *args):
        raise NotImplementedError

    def _abort_soon(self, request_id: str) -> None:
        raise NotImplementedError

    def _tok(self) -> Tokenizer:
        """The tokenizer API-side calls use (raises InvalidRequestError when there is none)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self._tok().encode(text)

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        return self._tok().apply_chat_template(messages)

    # ---------------------------------------------------------------- requests
    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        await self.start()
        if self._sleeping:
            raise ServiceUnavailableError("engine is asleep")
        if self._draining or self._stopping:
            raise ServiceUnavailableError("engine is draining")
        rid = request.request_id
        if rid in self._streams:
            raise InvalidRequestError(f"request_id {rid!r} is already in flight", field="request_id")
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = queue
        interval = request.stream_interval_s
        finished = False
        try:
            # Validation runs in the step loop (it owns the tokenizer) and raises here,
            # before anything is yielded. Waiting costs no latency: the request could not
            # be scheduled before the loop takes it anyway.
            await self._enqueue_add(request)
            while True:
                # A consumer slower than the engine gets everything already produced in
                # one output (one Ray object / SSE event instead of one per token).
                out = drain_merged(await queue.get(), queue)
                finished = out.finished
                yield out
                if finished:
                    return
                if interval > 0:
                    await self._pace(rid, interval)
        except InvalidRequestError:
            finished = True  # never entered the engine
            raise
        finally:
            self._streams.pop(rid, None)
            self._finished.discard(rid)
            if not finished and not self._stopping:
                self._abort_soon(rid)  # consumer went away (cancelled or closed): stop generating

    async def abort(self, request_id: str) -> None:
        if not self._running():
            return
        out = await self._call_op("abort", request_id)
        if out is not None:
            self._dispatch([out])

    async def preempt(self, request_id: str) -> bool:
        if not self._running():
            return False
        return await self._call_op("preempt", request_id)

    # ---------------------------------------------------------------- outputs (event loop)
    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._streams.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)
                if out.finished:
                    self._mark_finished(out.request_id)

    def _mark_finished(self, rid: str) -> None:
        """The final output of ``rid`` is queued: a paced stream hands it out now."""
        self._finished.add(rid)
        pacer = self._pacers.pop(rid, None)
        if pacer is not None and not pacer.done():
            pacer.set_result(None)

    def _end_streams(self, error: str) -> None:
        """Finish every open stream with ``error`` (the step loop is gone)."""
        for rid, queue in list(self._streams.items()):
            if rid not in self._finished:
                queue.put_nowait(RequestOutput(rid, finished=True, finish_reason="abort", error=error))
                self._mark_finished(rid)

    async def _pace(self, rid: str, interval: float) -> None:
        """Wait ``interval`` seconds, or less if the request finishes meanwhile."""
        if rid in self._finished:
            return
        loop = asyncio.get_running_loop()
        pacer = loop.create_future()
        self._pacers[rid] = pacer
        timer = loop.call_later(interval, _resolve, pacer)
        try:
            await pacer
        finally:
            timer.cancel()
            if self._pacers.get(rid) is pacer:
                del self._pacers[rid]

    def _wake_idle_waiters(self) -> None:
        for event in self._idle_waiters:
            event.set()

    # ---------------------------------------------------------------- lifecycle
    async def sleep(self) -> None:
        """Release the KV memory. Unfinished requests stay queued and are recomputed after
        ``wake_up``; new requests are rejected meanwhile."""
        await self.start()
        if self._sleeping:
            return
        await self._call_op("sleep")
        self._sleeping = True

    async def wake_up(self) -> None:
        if not self._sleeping:
            return
        await self._call_op("wake")
        self._sleeping = False

    async def drain(self, timeout_s: float) -> int:
        """Stop admitting; wait up to ``timeout_s`` for in-flight requests; return how many
        are still unfinished."""
        self._draining = True
        if not self._running():
            return 0
        event = asyncio.Event()
        self._idle_waiters.append(event)
        try:
            if await self._call_op("has_unfinished"):
                try:
                    await asyncio.wait_for(event.wait(), timeout_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._idle_waiters.remove(event)
        return await self._call_op("num_requests")
