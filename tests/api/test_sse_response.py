"""The SSE response's write bound: a client that stops reading cancels the stream (its
iterator is closed, as on a disconnect) instead of holding it for ever."""

from __future__ import annotations

import asyncio

from fleetserve.api.sse_response import BoundedSendStreamingResponse


async def test_a_blocked_write_closes_the_stream_after_the_timeout():
    closed = asyncio.Event()

    async def frames():
        try:
            for i in range(1000):
                yield f"data: {i}\n\n"
        finally:
            closed.set()

    sent, gate = [], asyncio.Event()

    async def send(message):
        sent.append(message)
        if len(sent) > 3:
            await gate.wait()  # the client stopped reading: this write never completes

    async def receive():
        await asyncio.Event().wait()

    response = BoundedSendStreamingResponse(frames(), send_timeout_s=0.2, media_type="text/event-stream")
    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    await asyncio.wait_for(response(scope, receive, send), 5)
    assert closed.is_set()  # upstream cancelled
    assert not any(m.get("more_body") is False for m in sent)  # no final frame: the server drops the connection


async def test_a_reading_client_gets_every_frame():
    async def frames():
        for i in range(5):
            yield f"data: {i}\n\n"

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        await asyncio.Event().wait()

    response = BoundedSendStreamingResponse(frames(), send_timeout_s=0.2, media_type="text/event-stream")
    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert [m["body"] for m in sent[1:-1]] == [f"data: {i}\n\n".encode() for i in range(5)]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
