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
            self._conn.send(self.config.model_dump(mode="json"))
            hello = await asyncio.to_thread(self._await_hello)
        except (EngineError, OSError, EOFError) as exc:
            self._dead = str(exc)
            self._conn.close()
            self._conn = None
            raise EngineError(self._dead) from exc
        self._info, self._stats = hello[1], hello[2]
        self._tokenizer = await asyncio.to_thread(load_tokenizer, self.config.model)
        self._loop.add_reader(self._conn.fileno(), self._on_readable)
        log.info("engine process %d ready (%s)", self._proc.pid, self._info.name)

    def _await_hello(self) -> tuple:
        waited = 0.0
        while not self._conn.poll(1.0):
            waited += 1.0
            if self._proc.poll() is not None or waited > self.start_timeout_s:
                self._proc.kill()
                raise EngineError(f"engine process did not start (exit code {self._proc.poll()})")
        msg = self._conn.recv()
        if msg[0] != "hello":
            self._proc.wait(30)
            raise EngineError(f"engine process failed to start: {msg[1] if len(msg) > 1 else msg}")
        return msg

    async def shutdown(self) -> None:
        self._stopping = True
        if self._proc is not None:
            try:
                self._send(("stop",))
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
                self._handle(self._conn.recv())
        except (EOFError, OSError):
            code = self._proc.poll() if self._proc is not None else None
            why = "engine shut down" if self._stopping else f"engine process exited (code {code})"
            self._gone(self._dead or why)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "out":
            self._stats = msg[2]
            self.outputs_received += len(msg[1])
            self._dispatch(msg[1])
        elif kind == "added":
            self._settle(self._adding.pop(msg[1], None), None, msg[2])
        elif kind == "reply":
            self._settle(self._calls.pop(msg[1], None), msg[2], msg[3])
        elif kind == "idle":
            self._stats = msg[1]
            self._wake_idle_waiters()
        elif kind == "fatal":
            self._dead = f"engine process failed: {msg[1]}"
            log.error(self._dead)

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

    def _send(self, msg: tuple) -> None:
        if self._conn is None:
            raise ServiceUnavailableError(self._dead or "engine process is not running")
        try:
            self._conn.send(msg)
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
            self._send(("add", request))
        except ServiceUnavailableError:
            self._adding.pop(request.request_id, None)
            raise
        await future

    async def _call_op(self, name: str, *args):
        call_id = next(self._call_ids)
        future = self._loop.create_future()
        self._calls[call_id] = future
        try:
            self._send(("op", call_id, name, args))
        except ServiceUnavailableError:
            self._calls.pop(call_id, None)
            raise
        return await future

    def _abort_soon(self, request_id: str) -> None:
        if self._running():
            try:
                self._send(("op", None, "abort", (request_id,)))
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
