"""The replica link's framing: the handshake, the session keys and a MAC on every frame.

Handshake (each side proves it holds the cluster's link secret; the replica speaks first)::

    replica -> ingress   MAGIC ("FSL" + version byte) + nonce_r (32 bytes)
    ingress -> replica   nonce_i (32) + HMAC-SHA256(secret, "i" + nonce_r + nonce_i)
    replica -> ingress   HMAC-SHA256(secret, "r" + nonce_i + nonce_r)

The replica answers only an ingress that passed, so an unauthenticated peer never obtains
a MAC; a failed handshake is logged with the peer's address and the reason (never the
secret). A peer of another link version fails the handshake, and the ingress then uses the
Serve handle instead.

Session keys: ``prk = HMAC(secret, label + nonce_r + nonce_i)``, then one key per direction
(``HMAC(prk, "i2r")``, ``HMAC(prk, "r2i")``), so a frame can neither be replayed into
another connection nor reflected back to its sender.

Frame: ``[4-byte big-endian length][body][16-byte MAC]``, the MAC a keyed BLAKE2b over the
sender's frame counter (8 bytes, not sent) and the body. A replayed, reordered, dropped,
truncated or altered frame fails the MAC; the reader closes that connection with a log line.
Frames are authenticated, not encrypted (docs/operations.md: the link stays on the cluster
network, which the chart's NetworkPolicy confines).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct

from fleetserve.deployments.link_messages import LINK_VERSION, MAX_FRAME_BYTES, FrameError

MAGIC = b"FSL" + bytes((LINK_VERSION,))
NONCE_BYTES = 32
MAC_BYTES = 16
LENGTH = struct.Struct("!I")
_SEQ = struct.Struct("!Q")
_HS_MAC = hashlib.sha256().digest_size
_KEY_LABEL = b"fleetserve replica link session v%d" % LINK_VERSION


class HandshakeError(ConnectionError):
    """The peer did not prove the secret, or speaks another link version."""


def _proof(secret: bytes, role: bytes, theirs: bytes, mine: bytes) -> bytes:
    return hmac.digest(secret, role + theirs + mine, "sha256")


def session_keys(secret: bytes, nonce_r: bytes, nonce_i: bytes) -> tuple[bytes, bytes]:
    """(ingress -> replica key, replica -> ingress key) of one connection."""
    prk = hmac.digest(secret, _KEY_LABEL + nonce_r + nonce_i, "sha256")
    return hmac.digest(prk, b"i2r", "sha256"), hmac.digest(prk, b"r2i", "sha256")


class Sealer:
    """Frames one direction's messages: length, body, MAC over (counter, body)."""

    def __init__(self, key: bytes):
        self._key = key
        self._seq = 0

    def seal(self, body: bytes) -> bytes:
        mac = hashlib.blake2b(_SEQ.pack(self._seq) + body, key=self._key, digest_size=MAC_BYTES).digest()
        self._seq += 1
        return LENGTH.pack(len(body) + MAC_BYTES) + body + mac


class Opener:
    """Reads one direction's frames and checks each MAC against the expected counter."""

    def __init__(self, key: bytes, reader: asyncio.StreamReader):
        self._key = key
        self._seq = 0
        self._reader = reader

    async def read(self) -> tuple[memoryview, int]:
        """(the next body, its frame's size on the wire); FrameError on a bad length or MAC."""
        (size,) = LENGTH.unpack(await self._reader.readexactly(LENGTH.size))
        if not MAC_BYTES < size <= MAX_FRAME_BYTES:
            raise FrameError(f"replica link: frame of {size} bytes (limit {MAX_FRAME_BYTES})")
        data = await self._reader.readexactly(size)
        return self.open(data), LENGTH.size + size

    def open(self, data: bytes) -> memoryview:
        body = memoryview(data)[:-MAC_BYTES]
        want = hashlib.blake2b(_SEQ.pack(self._seq) + body, key=self._key, digest_size=MAC_BYTES).digest()
        if not hmac.compare_digest(want, data[-MAC_BYTES:]):
            raise FrameError(f"replica link: frame {self._seq} failed its MAC (tampered, replayed or reordered)")
        self._seq += 1
        return body


async def replica_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            secret: bytes) -> tuple[Sealer, Opener]:
    """The replica's side; raises HandshakeError (or IncompleteReadError) on failure."""
    mine = os.urandom(NONCE_BYTES)
    writer.write(MAGIC + mine)
    await writer.drain()
    theirs = await reader.readexactly(NONCE_BYTES)
    answer = await reader.readexactly(_HS_MAC)
    if not hmac.compare_digest(answer, _proof(secret, b"i", mine, theirs)):
        raise HandshakeError("the ingress failed authentication (wrong secret or link version)")
    writer.write(_proof(secret, b"r", theirs, mine))
    await writer.drain()
    to_replica, to_ingress = session_keys(secret, mine, theirs)
    return Sealer(to_ingress), Opener(to_replica, reader)


async def ingress_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            secret: bytes) -> tuple[Sealer, Opener]:
    """The ingress's side; raises HandshakeError on failure."""
    try:
        magic = await reader.readexactly(len(MAGIC))
        if magic != MAGIC:
            raise HandshakeError(f"the replica speaks another link protocol (hello {magic!r}, expected {MAGIC!r})")
        theirs = await reader.readexactly(NONCE_BYTES)
        mine = os.urandom(NONCE_BYTES)
        writer.write(mine + _proof(secret, b"i", theirs, mine))
        await writer.drain()
        answer = await reader.readexactly(_HS_MAC)
    except asyncio.IncompleteReadError:
        raise HandshakeError("the replica closed the handshake (it refused our authentication)") from None
    if not hmac.compare_digest(answer, _proof(secret, b"r", mine, theirs)):
        raise HandshakeError("the replica failed authentication")
    to_replica, to_ingress = session_keys(secret, theirs, mine)
    return Sealer(to_replica), Opener(to_ingress, reader)
