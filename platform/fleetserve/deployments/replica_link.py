"""The ingress's direct stream link to model replicas (``server.replica_transport: direct``).

A Serve DeploymentHandle call costs each side several milliseconds of Python per request
(Serve's router, its gRPC transport, the replica's request wrapper, one message per yielded
item), on the event loops that also carry every other tenant's requests. Under overload that
queueing is where premium latency went (docs/benchmarks.md). This link carries only the data
path -- a request in, its :class:`RequestOutput` stream back, cancellation -- over one TCP
connection per (ingress process, replica), multiplexed by stream id. Replica choice, health,
stats, preemption and scaling stay with Serve: the replica advertises its address in its
routing stats, and the ingress falls back to the handle when a replica has none.

Wire format: typed, versioned frames (:mod:`fleetserve.deployments.link_messages`).
- client -> server: ``Generate(sid, GenerateRequest)``, ``Cancel(sid)``
- server -> client: ``Output(sid, RequestOutput)``, ``StreamError(sid, exception)``, ``End(sid)``,
  ``Migrate(sid, reason)`` (a draining replica hands the request back; raised at the ingress
  as :class:`~fleetserve.errors.RequestMigrated`)
A frame that does not decode (wrong version, unknown type, garbage) closes that connection
only, with a log line; the other connections go on.

Pickle runs code, so the link is authenticated before the first frame: each side proves it
holds the cluster's link secret with an HMAC-SHA256 over the other's random nonce, compared
in constant time (the ingress first; the replica answers only a peer that passed). Frames
are not encrypted: like Ray's own traffic, the link assumes the cluster network. The secret lives in Ray's GCS key-value store (:func:`cluster_secret`), so
whoever can read it could already run code on the cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import os
from typing import AsyncIterator, Callable, Optional

from fleetserve.deployments.link_messages import (
    LENGTH,
    MAX_FRAME_BYTES,
    Cancel,
    End,
    FrameError,
    Generate,
    Migrate,
    Output,
    StreamError,
    decode,
    frame,
)
from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.errors import ReplicaStreamLost, RequestMigrated, portable

log = logging.getLogger(__name__)

NONCE_BYTES = 32
CONNECT_TIMEOUT_S = 5.0
HIGH_WATER_BYTES = 1 << 20  # buffered output beyond which a stream waits for the socket
SECRET_KV_KEY = b"fleetserve:replica-link-secret"
SECRET_KV_NAMESPACE = "fleetserve"

_MAC_BYTES = hashlib.sha256().digest_size

GenerateFn = Callable[[GenerateRequest], AsyncIterator[RequestOutput]]


def cluster_secret() -> bytes:
    """The link secret of this Ray cluster: created once in the GCS, then read by everyone."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    _internal_kv_put(SECRET_KV_KEY, os.urandom(32), overwrite=False, namespace=SECRET_KV_NAMESPACE)
    secret = _internal_kv_get(SECRET_KV_KEY, namespace=SECRET_KV_NAMESPACE)
    if not secret:
        raise RuntimeError("replica link secret missing from the GCS")
    return secret


def _mac(secret: bytes, nonce: bytes, role: bytes) -> bytes:
    return hmac.new(secret, role + nonce, hashlib.sha256).digest()


async def _server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    """The client proves the secret first; only then does the server prove it back, so an
    unauthenticated peer never obtains a MAC. Raises ConnectionError on a wrong answer."""
    mine = os.urandom(NONCE_BYTES)
    writer.write(mine)
    theirs = await reader.readexactly(NONCE_BYTES)
    answer = await reader.readexactly(_MAC_BYTES)
    if not hmac.compare_digest(answer, _mac(secret, mine, b"c")):
        raise ConnectionError("replica link: peer failed authentication")
    writer.write(_mac(secret, theirs, b"s"))


async def _client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    theirs = await reader.readexactly(NONCE_BYTES)
    mine = os.urandom(NONCE_BYTES)
    writer.write(mine + _mac(secret, theirs, b"c"))
    try:
        answer = await reader.readexactly(_MAC_BYTES)
    except asyncio.IncompleteReadError:
        raise ConnectionError("replica link: peer failed authentication (refused by the replica)") from None
    if not hmac.compare_digest(answer, _mac(secret, mine, b"s")):
        raise ConnectionError("replica link: peer failed authentication")


async def _read_message(reader: asyncio.StreamReader):
    """The next message; FrameError when the frame does not decode."""
    (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"replica link: frame of {size} bytes (limit {MAX_FRAME_BYTES})")
    return decode(await reader.readexactly(size))


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
        streams: dict[int, asyncio.Task] = {}
        try:
            await asyncio.wait_for(_server_handshake(reader, writer, self._secret), CONNECT_TIMEOUT_S)
            await self._serve_requests(reader, writer, streams)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError):
            pass  # the ingress went away (or failed authentication): its streams end below
        except asyncio.CancelledError:
            pass
        except FrameError as exc:  # a bad frame ends this connection only
            log.warning("replica link: closing a connection that sent a bad frame: %s", exc)
        except Exception:  # noqa: BLE001 - anything else ends this connection only
            log.exception("replica link: connection dropped")
        finally:
            for t in list(streams.values()):
                t.cancel()
            await asyncio.gather(*streams.values(), return_exceptions=True)
            writer.close()
            self._conns.discard(task)

    async def _serve_requests(self, reader, writer, streams: dict[int, asyncio.Task]) -> None:
        """Start a stream per Generate, cancel one per Cancel, until the connection ends."""
        while True:
            msg = await _read_message(reader)
            if type(msg) is Generate:
                t = asyncio.create_task(self._stream(msg.sid, msg.request, writer))
                streams[msg.sid] = t
                t.add_done_callback(lambda _t, sid=msg.sid: streams.pop(sid, None))
            elif type(msg) is Cancel:
                t = streams.get(msg.sid)
                if t is not None:
                    t.cancel()
            else:
                raise FrameError(f"replica link: {type(msg).__name__} is not a request message")

    async def _stream(self, sid: int, request: GenerateRequest, writer: asyncio.StreamWriter) -> None:
        stream = self._generate(request)
        try:
            async for out in stream:
                if writer.is_closing():
                    return  # the ingress is gone: closing the stream aborts the request
                writer.write(frame(Output(sid, out)))
                if writer.transport.get_write_buffer_size() > HIGH_WATER_BYTES:
                    await writer.drain()
            if not writer.is_closing():
                writer.write(frame(End(sid)))
        except asyncio.CancelledError:
            raise  # cancelled by the ingress or the connection
        except RequestMigrated as exc:
            if not writer.is_closing():
                writer.write(frame(Migrate(sid, exc.message)))
        except Exception as exc:  # noqa: BLE001 - handed to the ingress, raised there
            if not writer.is_closing():
                writer.write(frame(StreamError(sid, portable(exc))))
        finally:
            await stream.aclose()  # an unfinished stream aborts its engine request


_LOST = object()  # queued for every open stream when the link drops


class _Link:
    """One authenticated connection to one replica, shared by many streams."""

    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.address = address
        self._reader = reader
        self._writer = writer
        self._streams: dict[int, asyncio.Queue] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._task = asyncio.create_task(self._read_loop())

    def open(self, request: GenerateRequest) -> tuple[int, asyncio.Queue]:
        sid = next(self._ids)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[sid] = queue
        self._writer.write(frame(Generate(sid, request)))
        return sid, queue

    def finish(self, sid: int, cancel: bool) -> None:
        self._streams.pop(sid, None)
        if cancel and not self.closed:
            self._writer.write(frame(Cancel(sid)))

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await _read_message(self._reader)
                if type(msg) not in (Output, End, StreamError, Migrate):
                    raise FrameError(f"replica link: {type(msg).__name__} is not a stream message")
                queue = self._streams.get(msg.sid)
                if queue is not None:  # else: a stream the ingress already let go of
                    queue.put_nowait(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except FrameError as exc:  # a bad frame ends this link; its streams fail below
            log.warning("replica link to %s: closing after a bad frame: %s", self.address, exc)
        except Exception:  # noqa: BLE001 - anything else ends the link; streams fail below
            log.exception("replica link to %s dropped", self.address)
        finally:
            self.closed = True
            self._writer.close()
            for queue in self._streams.values():
                queue.put_nowait(_LOST)

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
            await asyncio.wait_for(_client_handshake(reader, writer, self._secret), CONNECT_TIMEOUT_S)
        except BaseException:
            writer.close()
            raise
        link = _Link(address, reader, writer)
        self._links[address] = link
        return link

    async def generate(self, link: _Link, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs over ``link``; leaving early cancels it on the replica."""
        sid, queue = link.open(request)
        finished = False
        try:
            while True:
                msg = await queue.get()
                if type(msg) is Output:
                    finished = msg.output.finished
                    yield msg.output
                    if finished:
                        return
                    continue
                finished = True
                if type(msg) is End:
                    return
                if type(msg) is StreamError:
                    raise msg.error
                if type(msg) is Migrate:
                    raise RequestMigrated(f"replica {link.address} handed the request back ({msg.reason})")
                raise ReplicaStreamLost(f"lost the connection to replica {link.address}")
        finally:
            link.finish(sid, cancel=not finished)

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
