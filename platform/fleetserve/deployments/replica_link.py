"""The ingress's direct stream link to model replicas (``server.replica_transport: direct``).

A Serve DeploymentHandle call costs each side several milliseconds of Python per request
(Serve's router, its gRPC transport, the replica's request wrapper, one message per yielded
item), on the event loops that also carry every other tenant's requests. Under overload that
queueing is where premium latency went (docs/benchmarks.md). This link carries only the data
path -- a request in, its :class:`RequestOutput` stream back, cancellation -- over one TCP
connection per (ingress process, replica), multiplexed by stream id. Replica choice, health,
stats, preemption and scaling stay with Serve: the replica advertises its address in its
routing stats, and the ingress falls back to the handle when a replica has none.

Wire: typed msgspec frames (:mod:`.link_messages`), each with a MAC under a per-connection
session key and a per-direction counter (:mod:`.link_frames`, which also has the
handshake); errors cross typed through an allow-list (:mod:`.link_errors`). A frame that
fails its MAC or does not decode closes that connection only, with a log line.

Flow control: each stream may have ``STREAM_WINDOW_BYTES`` of output frames in flight; the
ingress grants more (:class:`Credit`) as its consumer takes them. A client that stops
reading its SSE stream therefore stops that one stream on the replica (the engine request
is then cancelled by ``server.stream_send_timeout_s``) while the connection's other streams
go on, and neither side buffers more than a window per stream. Data writes are awaited
(``drain()``), so a stalled socket stops its writers instead of growing the buffer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import AsyncIterator, Callable, Optional

from fleetserve.deployments.link_errors import error_frame, error_of
from fleetserve.deployments.link_frames import Opener, Sealer, ingress_handshake, replica_handshake
from fleetserve.deployments.link_messages import (
    Cancel,
    Credit,
    End,
    FrameError,
    Generate,
    Migrate,
    Output,
    StreamError,
    decode_reply,
    decode_request,
    encode,
)
from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.errors import ReplicaStreamLost, RequestMigrated

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
STREAM_WINDOW_BYTES = 256 * 1024  # output frames one stream may have in flight, ungranted
MAX_STREAMS_PER_LINK = 4096
SECRET_KV_KEY = b"fleetserve:replica-link-secret"
SECRET_KV_NAMESPACE = "fleetserve"

GenerateFn = Callable[[GenerateRequest], AsyncIterator[RequestOutput]]


def cluster_secret() -> bytes:
    """The link secret of this Ray cluster: created once in the GCS, then read by everyone."""
    import os

    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    _internal_kv_put(SECRET_KV_KEY, os.urandom(32), overwrite=False, namespace=SECRET_KV_NAMESPACE)
    secret = _internal_kv_get(SECRET_KV_KEY, namespace=SECRET_KV_NAMESPACE)
    if not secret:
        raise RuntimeError("replica link secret missing from the GCS")
    return secret


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class _Outbound:
    """One stream on the replica: its task and the bytes it may still send."""

    __slots__ = ("task", "credit", "granted")

    def __init__(self, credit: int):
        self.task: Optional[asyncio.Task] = None
        self.credit = credit
        self.granted = asyncio.Event()


class _ServerConn:
    """One authenticated ingress connection on the replica."""

    def __init__(self, generate: GenerateFn, sealer: Sealer, opener: Opener, writer: asyncio.StreamWriter):
        self._generate = generate
        self._sealer = sealer
        self._opener = opener
        self._writer = writer
        self.streams: dict[int, _Outbound] = {}

    async def serve(self) -> None:
        """Start a stream per Generate, grant per Credit, cancel per Cancel, until the end."""
        while True:
            body, _ = await self._opener.read()
            msg = decode_request(body)
            if type(msg) is Generate:
                self._start(msg)
                continue
            s = self.streams.get(msg.sid)
            if s is None:
                continue  # a stream that already ended here
            if type(msg) is Credit:
                if msg.nbytes <= 0:
                    raise FrameError(f"replica link: credit of {msg.nbytes} bytes")
                s.credit += msg.nbytes
                s.granted.set()
            else:
                s.task.cancel()

    def _start(self, msg: Generate) -> None:
        if msg.sid in self.streams or len(self.streams) >= MAX_STREAMS_PER_LINK or msg.window <= 0:
            raise FrameError(f"replica link: refused stream {msg.sid} (duplicate, window {msg.window} "
                             f"or over {MAX_STREAMS_PER_LINK} streams)")
        s = self.streams[msg.sid] = _Outbound(msg.window)
        s.task = asyncio.create_task(self._stream(msg.sid, msg.request, s))
        s.task.add_done_callback(lambda _t, sid=msg.sid: self.streams.pop(sid, None))

    async def _send(self, msg) -> int:
        """Seal and write ``msg`` (sealing and writing are one step: counters stay in order),
        then wait while the socket is backed up. Returns the frame's size."""
        data = self._sealer.seal(encode(msg))
        self._writer.write(data)
        await self._writer.drain()
        return len(data)

    async def _stream(self, sid: int, request: GenerateRequest, s: _Outbound) -> None:
        stream = self._generate(request)
        try:
            async for out in stream:
                while s.credit <= 0:  # the ingress's consumer is behind: hold this stream only
                    s.granted.clear()
                    await s.granted.wait()
                if self._writer.is_closing():
                    return  # the ingress is gone: closing the stream aborts the request
                s.credit -= await self._send(Output.of(sid, out))
            await self._send(End(sid))
        except asyncio.CancelledError:
            raise  # cancelled by the ingress or the connection
        except (ConnectionError, OSError):
            return  # the connection broke under the write: the connection's task ends it all
        except RequestMigrated as exc:
            await self._send_quietly(Migrate(sid, exc.message))
        except Exception as exc:  # noqa: BLE001 - handed to the ingress, raised there
            await self._send_quietly(error_frame(sid, exc))
        finally:
            await stream.aclose()  # an unfinished stream aborts its engine request

    async def _send_quietly(self, msg) -> None:
        if not self._writer.is_closing():
            try:
                await self._send(msg)
            except (ConnectionError, OSError):
                pass


class ReplicaLinkServer:
    """Serves ``generate`` (the replica's own async generator) to authenticated ingresses."""

    def __init__(self, generate: GenerateFn, secret: bytes, host: str = "127.0.0.1"):
        self._generate = generate
        self._secret = secret
        self._host = host
        self._server: Optional[asyncio.AbstractServer] = None
        self._conns: set[asyncio.Task] = set()
        self.address: Optional[str] = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve_conn, self._host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self._host}:{port}"
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        conn: Optional[_ServerConn] = None
        try:
            conn = await self._accept(reader, writer)
            if conn is not None:
                await conn.serve()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass  # the ingress went away: its streams end below
        except FrameError as exc:  # a bad frame ends this connection only
            log.warning("replica link: closing the connection from %s after a bad frame: %s", _peer(writer), exc)
        except Exception:  # noqa: BLE001 - anything else ends this connection only
            log.exception("replica link: connection from %s dropped", _peer(writer))
        finally:
            tasks = [s.task for s in conn.streams.values()] if conn is not None else []
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            self._conns.discard(task)

    async def _accept(self, reader, writer) -> Optional[_ServerConn]:
        """The connection once the peer passed the handshake; None (logged) when it did not."""
        try:
            sealer, opener = await asyncio.wait_for(replica_handshake(reader, writer, self._secret), CONNECT_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            log.warning("replica link: handshake from %s failed: %s", _peer(writer), reason)
            return None
        return _ServerConn(self._generate, sealer, opener, writer)


_LOST = object()  # queued for every open stream when the link drops


class _Inbound:
    """One stream at the ingress: its outputs, and the flow-control window on both ends."""

    __slots__ = ("queue", "window", "taken")

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()  # at most a window of frames (the replica waits)
        self.window = STREAM_WINDOW_BYTES  # what the replica may still send, as granted so far
        self.taken = 0  # bytes the consumer took since the last Credit


class _Link:
    """One authenticated connection to one replica, shared by many streams."""

    def __init__(self, address: str, writer: asyncio.StreamWriter, sealer: Sealer, opener: Opener):
        self.address = address
        self._writer = writer
        self._sealer = sealer
        self._opener = opener
        self._streams: dict[int, _Inbound] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._task = asyncio.create_task(self._read_loop())

    async def open(self, request: GenerateRequest) -> tuple[int, _Inbound]:
        if self.closed:
            raise ConnectionError("the link is closed")
        sid = next(self._ids)
        stream = self._streams[sid] = _Inbound()
        await self._send(Generate(sid, request, STREAM_WINDOW_BYTES))
        return sid, stream

    async def took(self, sid: int, stream: _Inbound, nbytes: int) -> None:
        """The consumer took ``nbytes`` of output frames: grant them again, half a window at a time."""
        stream.taken += nbytes
        if stream.taken < STREAM_WINDOW_BYTES // 2 or self.closed:
            return
        grant, stream.taken = stream.taken, 0
        stream.window += grant
        try:
            await self._send(Credit(sid, grant))
        except (ConnectionError, OSError):
            pass  # the read loop sees the broken link and ends every stream

    def finish(self, sid: int, cancel: bool) -> None:
        self._streams.pop(sid, None)
        if cancel and not self.closed and not self._writer.is_closing():
            # Not awaited (this runs in a generator's finally): one small frame per stream.
            self._writer.write(self._sealer.seal(encode(Cancel(sid))))

    async def _send(self, msg) -> None:
        self._writer.write(self._sealer.seal(encode(msg)))  # sealed and written in one step: counters stay in order
        await self._writer.drain()

    async def _read_loop(self) -> None:
        try:
            while True:
                body, size = await self._opener.read()
                msg = decode_reply(body)
                stream = self._streams.get(msg.sid)
                if stream is None:
                    continue  # a stream the ingress already let go of
                if type(msg) is Output:
                    if stream.window <= 0:
                        raise FrameError(f"replica link: stream {msg.sid} overran its flow-control window")
                    stream.window -= size
                stream.queue.put_nowait((msg, size))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass
        except FrameError as exc:  # a bad frame ends this link; its streams fail below
            log.warning("replica link to %s: closing after a bad frame: %s", self.address, exc)
        except Exception:  # noqa: BLE001 - anything else ends the link; streams fail below
            log.exception("replica link to %s dropped", self.address)
        finally:
            self.closed = True
            self._writer.close()
            for stream in self._streams.values():
                stream.queue.put_nowait((_LOST, 0))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class ReplicaLinkClient:
    """The ingress side: one :class:`_Link` per replica address, opened on first use."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self._links: dict[str, _Link] = {}
        self._connecting: dict[str, asyncio.Future] = {}

    async def link(self, address: str) -> _Link:
        """The open link to ``address``; raises OSError/ConnectionError if it cannot be opened."""
        link = self._links.get(address)
        if link is not None and not link.closed:
            return link
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(address))
            self._connecting[address] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(address, None))
        return await asyncio.shield(pending)

    async def _connect(self, address: str) -> _Link:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_S)
        try:
            sealer, opener = await asyncio.wait_for(ingress_handshake(reader, writer, self._secret), CONNECT_TIMEOUT_S)
        except BaseException as exc:
            writer.close()
            if isinstance(exc, (ConnectionError, asyncio.TimeoutError)):
                log.warning("replica link: handshake with %s failed: %s", address, exc or "timed out")
            raise
        link = _Link(address, writer, sealer, opener)
        self._links[address] = link
        return link

    async def generate(self, link: _Link, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs over ``link``; leaving early cancels it on the replica."""
        try:
            sid, stream = await link.open(request)
        except (ConnectionError, OSError):
            raise ReplicaStreamLost(f"lost the connection to replica {link.address}") from None
        finished = False
        try:
            while True:
                msg, size = await stream.queue.get()
                if type(msg) is Output:
                    out = msg.output()
                    finished = out.finished
                    yield out
                    if finished:
                        return
                    await link.took(sid, stream, size)
                    continue
                finished = True
                if type(msg) is End:
                    return
                if type(msg) is StreamError:
                    raise error_of(msg)
                if type(msg) is Migrate:
                    raise RequestMigrated(f"replica {link.address} handed the request back ({msg.reason})")
                raise ReplicaStreamLost(f"lost the connection to replica {link.address}")
        finally:
            link.finish(sid, cancel=not finished)

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
