"""The SSE response, with a bound on how long one write may wait for a client that does not read.

A client that opens a stream and stops reading leaves the server's write waiting on TCP flow
control for ever: the request keeps its tenant's concurrency slot, its admission place and,
until it finishes, its KV blocks, and nothing is metered. ``send_timeout_s`` bounds each
write: past it the stream is cancelled exactly as a client disconnect is (the event iterator
is closed, which aborts the request in the engine, frees its KV blocks and meters it as
aborted), and the response ends without its final frame, so the server closes the
connection. What stays buffered meanwhile is bounded by the transport's high-water mark and
the socket buffers, never by the stream's length.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from starlette.responses import StreamingResponse
from starlette.types import Send

log = logging.getLogger(__name__)


class BoundedSendStreamingResponse(StreamingResponse):
    """A StreamingResponse whose every write must complete within ``send_timeout_s`` (None: no bound)."""

    def __init__(self, content, *, send_timeout_s: Optional[float], **kwargs):
        super().__init__(content, **kwargs)
        self.send_timeout_s = send_timeout_s

    async def stream_response(self, send: Send) -> None:
        if self.send_timeout_s is None:
            return await super().stream_response(send)
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            if not isinstance(chunk, (bytes, memoryview)):
                chunk = chunk.encode(self.charset)
            try:
                await asyncio.wait_for(send({"type": "http.response.body", "body": chunk, "more_body": True}),
                                       self.send_timeout_s)
            except asyncio.TimeoutError:
                log.warning("stream cancelled: the client read nothing for %.1fs (server.stream_send_timeout_s)",
                            self.send_timeout_s)
                await self.body_iterator.aclose()  # aborts the request upstream, as a disconnect does
                return  # no final frame: the server closes the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})
