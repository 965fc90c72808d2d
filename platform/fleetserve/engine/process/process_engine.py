"""``ProcessEngine``: the native engine with its step loop in a child process.

Same contract and behaviour as :class:`fleetserve.engine.process.async_engine.AsyncEngine` (the two
share :class:`fleetserve.engine.process.front.EngineFront`), but the scheduler, the model and
the step thread live in a child process (:mod:`fleetserve.engine.process.core_process`), as vLLM V1
runs its EngineCore. Why: on CPU the model's forward pass is a long run of small torch ops,
each taking and dropping the GIL, so in one process the replica's event loop and Ray's
threads queue for the GIL behind it on every wake-up (measured: a probe loop's wake-up
p99 0.9 ms next to a decoding step thread vs 0.3 ms with the same loop in another process).
Apart, the replica's loop only moves messages: one pipe message per engine step carries
every stream's outputs, and the child's step thread reads new requests itself.

The replica's event loop reads the child's socket with ``add_reader`` (no reader thread).
The messages are typed, versioned frames (:mod:`fleetserve.engine.process.messages`); a
frame that does not decode ends the pipe like the child's death does, with a log line.
If the child dies, every open stream ends with an error, pending calls fail with
ServiceUnavailableError, and ``check_health`` raises so Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.process import messages as m
from fleetserve.engine.process.front import EngineFront
from fleetserve.engine.protocol import EngineStats, GenerateRequest, ModelInfo
from fleetserve.engine.tokenizer import Tokenizer, load_tokenizer
from fleetserve.errors import EngineError, InvalidRequestError, ServiceUnavailableError

log = logging.getLogger(__name__)

_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding ``fleetserve``


class ProcessEngine(EngineFront):
    """Native engine, step loop in a child process (``EngineConfig.engine_process``)."""

    def __init__(self, config: EngineConfig, *, start_timeout_s: float = 600.0):
        super().__init__()
        self.config = config
        self.start_timeout_s = start_timeout_s
        self._starting: Optional[asyncio.Task] = None
        self._proc: Optional[subprocess.Popen] = None
        self._conn: Optional[Connection] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._info: Optional[ModelInfo] = None
        self._tokenizer: Optional[Tokenizer] = None
        self._stats = EngineStats()
        self.outputs_received = 0  # RequestOutputs that crossed the pipe (the child paces streams)
        self._adding: dict[str, asyncio.Future] = {}
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._dead: Optional[str] = None  # why the child is gone

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        await asyncio.shield(self._starting)

    async def _spawn(self) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fleetserve.engine.process.core_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env,
            )
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._conn.send_bytes(m.encode(m.Configure(self.config.model_dump(mode="json"))))
            hello = await asyncio.to_thread(self._await_hello)
        except (EngineError, m.FrameError, OSError, EOFError) as exc:
            self._dead = str(exc)
            self._conn.close()
            self._conn = None
            raise EngineError(self._dead) from exc
        self._info, self._stats = hello.info, hello.stats
        self._tokenizer = await asyncio.to_thread(load_tokenizer, self.config.model)
        self._loop.add_reader(self._conn.fileno(), self._on_readable)
        log.info("engine process %d ready (%s)", self._proc.pid, self._info.name)

    def _await_hello(self) -> m.Hello:
        waited = 0.0
        while not self._conn.poll(1.0):
            waited += 1.0
            if self._proc.poll() is not None or waited > self.start_timeout_s:
                self._proc.kill()
                raise EngineError(f"engine process did not start (exit code {self._proc.poll()})")
        msg = m.decode(self._conn.recv_bytes())
        if type(msg) is not m.Hello:
            self._proc.wait(30)
            raise EngineError(f"engine process failed to start: {msg.message if type(msg) is m.Fatal else msg}")
        return msg

    async def shutdown(self) -> None:
        self._stopping = True
        if self._proc is not None:
            try:
                self._send(m.Stop())
            except ServiceUnavailableError:
                pass  # already gone
            try:
                await asyncio.to_thread(self._proc.wait, 30)
            except subprocess.TimeoutExpired:
                log.warning("engine process %d did not stop in 30 s; killing it", self._proc.pid)
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        self._gone("engine shut down")

    # ---------------------------------------------------------------- the child's messages
    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(m.decode(self._conn.recv_bytes()))
        except (EOFError, OSError):
            code = self._proc.poll() if self._proc is not None else None
            why = "engine shut down" if self._stopping else f"engine process exited (code {code})"
            self._gone(self._dead or why)
        except m.FrameError as exc:  # the pipe is no longer trustworthy: end it (the child exits on EOF)
            log.error("engine process %s sent a bad frame; closing its pipe: %s", self.pid, exc)
            self._gone(f"engine process sent a bad frame: {exc}")

    def _handle(self, msg) -> None:
        kind = type(msg)
        if kind is m.Outputs:
            self._stats = msg.stats
            self.outputs_received += len(msg.outputs)
            self._dispatch(msg.outputs)
        elif kind is m.Added:
            self._settle(self._adding.pop(msg.request_id, None), None, msg.error)
        elif kind is m.Reply:
            self._settle(self._calls.pop(msg.call_id, None), msg.value, msg.error)
        elif kind is m.Idle:
            self._stats = msg.stats
            self._wake_idle_waiters()
        elif kind is m.Fatal:
            self._dead = f"engine process failed: {msg.message}"
            log.error(self._dead)
        else:
            raise m.FrameError(f"engine pipe: {kind.__name__} is not a message from the engine process")

    @staticmethod
    def _settle(future: Optional[asyncio.Future], value, error: Optional[BaseException]) -> None:
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _gone(self, why: str) -> None:
        """The child is gone (or told to stop): end streams, fail pending calls."""
        if self._dead is None:
            self._dead = why
        if self._conn is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        for future in [*self._adding.values(), *self._calls.values()]:
            if not future.done():
                future.set_exception(ServiceUnavailableError(why))
        self._adding.clear()
        self._calls.clear()
        self._end_streams(why)
        self._wake_idle_waiters()

    def _send(self, msg) -> None:
        if self._conn is None:
            raise ServiceUnavailableError(self._dead or "engine process is not running")
        try:
            self._conn.send_bytes(m.encode(msg))
        except OSError as exc:
            self._gone(f"engine process unreachable: {exc}")
            raise ServiceUnavailableError(self._dead) from exc

    # ---------------------------------------------------------------- EngineFront transport
    def _running(self) -> bool:
        return self._conn is not None and self._dead is None

    async def _enqueue_add(self, request: GenerateRequest) -> None:
        future = self._loop.create_future()
        self._adding[request.request_id] = future
        try:
            self._send(m.Add(request))
        except ServiceUnavailableError:
            self._adding.pop(request.request_id, None)
            raise
        await future

    async def _call_op(self, name: str, *args):
        call_id = next(self._call_ids)
        future = self._loop.create_future()
        self._calls[call_id] = future
        try:
            self._send(m.Op(call_id, name, args))
        except ServiceUnavailableError:
            self._calls.pop(call_id, None)
            raise
        return await future

    def _abort_soon(self, request_id: str) -> None:
        if self._running():
            try:
                self._send(m.Op(None, "abort", (request_id,)))
            except ServiceUnavailableError:
                pass

    # ---------------------------------------------------------------- state
    def stats(self) -> EngineStats:
        return replace(self._stats, healthy=self._dead is None, sleeping=self._sleeping, draining=self._draining)

    async def check_health(self) -> None:
        if self._proc is None:
            raise EngineError("engine not started")
        if self._dead is not None or self._proc.poll() is not None:
            raise EngineError(self._dead or f"engine process exited (code {self._proc.poll()})")

    def model_info(self) -> ModelInfo:
        if self._info is None:
            raise EngineError("engine not started")
        return replace(self._info, has_chat_template=bool(self._tokenizer and self._tokenizer.has_chat_template))

    def _tok(self) -> Tokenizer:
        if self._tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer (or the engine is not started)", field="prompt")
        return self._tokenizer
