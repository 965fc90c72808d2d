"""The ingress merges what arrived for each choice while its consumer was busy."""

import asyncio
from contextlib import aclosing

from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.engine.protocol import RequestOutput
from fleetserve.tenants.context import QuotaTicket
from tests.api.test_chunk_format import make_job


class ScriptedClient:
    """Yields a fixed script of outputs per engine request (choice index = id suffix)."""

    def __init__(self, scripts: dict[int, list[RequestOutput]]):
        self.scripts = scripts

    async def generate(self, request, route):
        for out in self.scripts[int(request.request_id.rsplit("-", 1)[1])]:
            yield out

    async def model_info(self, model):
        raise NotImplementedError


class OpenGatekeeper:
    """Admits everything (pure unit test of the merge; the real gatekeeper has its own tests)."""

    completed = 0

    async def reserve_quota(self, ctx, model, request_id, prompt_tokens, max_tokens):
        return QuotaTicket(ctx, model, request_id, lease=None, reserved_at=0.0)

    async def release_unserved(self, ticket, shed):
        raise AssertionError("nothing is shed here")

    async def complete(self, ticket, prompt_tokens, completion_tokens, outcome):
        self.completed += 1


def script(n_tokens: int, offset: int) -> list[RequestOutput]:
    outs = [RequestOutput("x", chr(97 + (offset + i) % 26), [offset + i], completion_tokens=i + 1) for i in range(n_tokens)]
    outs[-1].finished, outs[-1].finish_reason = True, "length"
    return outs


async def test_merged_events_carry_every_token_in_order():
    scripts = {0: script(9, 0), 1: script(5, 100)}
    gk = OpenGatekeeper()
    service = InferenceService([ModelSpec("tiny \"m\"", "/x")], ScriptedClient(scripts), gk)
    job = make_job()
    events = []
    async with aclosing(service.run(job)) as stream:
        async for ev in stream:
            events.append(ev)
    assert len(events) < sum(len(s) for s in scripts.values())  # merged
    for index, outs in scripts.items():
        mine = [ev.output for ev in events if ev.index == index]
        assert [t for o in mine for t in o.token_ids_delta] == [t for o in outs for t in o.token_ids_delta]
        assert "".join(o.text_delta for o in mine) == "".join(o.text_delta for o in outs)
        assert mine[-1].finished and not any(o.finished for o in mine[:-1])
        assert mine[-1].completion_tokens == len(outs)
    assert gk.completed == 1


class EndlessClient(ScriptedClient):
    """One token per output, forever; records streams closed before their end."""

    def __init__(self):
        self.closed: list[str] = []

    async def generate(self, request, route):
        try:
            i = 0
            while True:
                yield RequestOutput(request.request_id, "a", [i], completion_tokens=i + 1)
                i += 1
                await asyncio.sleep(0.001)  # like a real stream: outputs come over time
        finally:
            self.closed.append(request.request_id)


async def test_leaving_early_closes_every_replica_stream_at_once():
    """A consumer that stops reading (client gone) closes the client's streams before
    ``run`` returns, for one choice (direct path) and for several (pump tasks)."""
    for n in (1, 3):
        client, gk = EndlessClient(), OpenGatekeeper()
        service = InferenceService([ModelSpec("tiny \"m\"", "/x")], client, gk)
        async with aclosing(service.run(make_job(n=n))) as stream:
            async for _ in stream:
                break
        assert sorted(client.closed) == [f"abc123-{i}" for i in range(n)]
        assert gk.completed == 1
