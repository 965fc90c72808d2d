"""The ingress resumes a broken replica stream elsewhere (api/resume.py): every way a stream
breaks, at every point, gives the client the uninterrupted token stream; resumes are bounded
and end in a visible 503; what is not the replica's fault is never retried."""

from __future__ import annotations

from contextlib import aclosing
from typing import Optional

import pytest

from fleetserve.api.resume import ResumePolicy, resumable_stream
from fleetserve.api.service import InferenceService, ModelSpec
from fleetserve.deployments.model_client import LinkTarget, Route
from fleetserve.engine.protocol import GenerateRequest, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import InvalidRequestError, ReplicaStreamLost, RequestMigrated, ServiceUnavailableError
from tests.api.test_chunk_format import make_job
from tests.api.test_service_merge import OpenGatekeeper

NO_WAIT = ResumePolicy(max_resumes=3, backoff_s=0.0)
REPLICAS = (LinkTarget("A", "a:1"), LinkTarget("B", "b:1"), LinkTarget("C", "c:1"))


class ActorDiedError(Exception):
    """Named like Ray's: the ingress types it by name (api/errors.py)."""


def reference(base_id: str, n: int) -> list[int]:
    return [(hash(base_id) + 7 * i) % 1000 for i in range(n)]


class FlakyFleet:
    """A deterministic 'engine' behind a client: request ``x`` always yields ``reference(x)``,
    a continuation starts after its ``resume_token_ids`` (checked to be that prefix). Each
    call takes the next fault from ``faults``: (kind, outputs before it) or None."""

    def __init__(self, faults: list[Optional[tuple[str, int]]]):
        self.faults = list(faults)
        self.calls: list[tuple[GenerateRequest, Route]] = []

    async def generate(self, request: GenerateRequest, route: Route):
        self.calls.append((request, route))
        base = request.request_id.split(".r")[0]
        n = request.params.max_tokens
        ref = reference(base, n)
        done = list(request.resume_token_ids)
        assert done == ref[:len(done)], "a continuation must carry exactly the tokens already sent"
        fault = self.faults.pop(0) if self.faults else None
        replica = route.links[0].replica if route.links else None
        for count, pos in enumerate(range(len(done), n)):
            if fault is not None and count == fault[1]:
                kind = fault[0]
                if kind == "lost":
                    raise ReplicaStreamLost("link closed", replica=replica)
                if kind == "migrate":
                    raise RequestMigrated("draining", replica=replica)
                if kind == "actor":
                    raise ActorDiedError("the actor died")
                if kind == "abort":  # the replica ended it, tokens and all: they must be regenerated
                    yield RequestOutput(request.request_id, f"<{ref[pos]}>", [ref[pos]], finished=True,
                                        finish_reason="abort", error="engine process died")
                    return
                if kind == "truncate":
                    return
                if kind == "invalid":
                    raise InvalidRequestError("bad", field="prompt")
            last = pos == n - 1
            yield RequestOutput(request.request_id, f"<{ref[pos]}>", [ref[pos]], finished=last,
                                finish_reason="length" if last else None)

    async def model_info(self, model):
        raise NotImplementedError


def request(rid: str = "job-0", n: int = 12) -> GenerateRequest:
    return GenerateRequest(rid, SamplingParams(max_tokens=n, temperature=1.0, seed=5), prompt_token_ids=[1, 2])


async def collect(fleet: FlakyFleet, req: GenerateRequest, policy: ResumePolicy = NO_WAIT, resumes=None):
    route = Route("m", None, REPLICAS)
    outs = []
    stream = resumable_stream(fleet, req, route, lambda avoid: route, policy,
                              (lambda *a: resumes.append(a)) if resumes is not None else None)
    async with aclosing(stream) as s:
        async for out in s:
            outs.append(out)
    return outs


@pytest.mark.parametrize("kind", ["lost", "migrate", "actor", "abort", "truncate"])
@pytest.mark.parametrize("at", [0, 1, 5, 11])
async def test_every_break_at_every_point_gives_the_uninterrupted_stream(kind, at):
    fleet = FlakyFleet([(kind, at), (kind, 2)])  # it breaks again on the first continuation
    resumes: list = []
    outs = await collect(fleet, request(), resumes=resumes)
    want = reference("job-0", 12)
    assert [t for o in outs for t in o.token_ids_delta] == want
    assert "".join(o.text_delta for o in outs) == "".join(f"<{t}>" for t in want)
    assert outs[-1].finished and outs[-1].finish_reason == "length" and not any(o.finished for o in outs[:-1])
    reqs = [r for r, _ in fleet.calls]
    assert [r.request_id for r in reqs] == ["job-0", "job-0.r1", "job-0.r2"][:len(reqs)]
    assert [len(r.resume_token_ids) for r in reqs[1:]] == [at, at + 2][:len(reqs) - 1]
    assert len(resumes) == len(reqs) - 1
    assert resumes[0][0] == ("migrated" if kind == "migrate" else "lost") and resumes[0][1] == at


async def test_the_replica_that_lost_the_stream_is_avoided():
    fleet = FlakyFleet([("lost", 3), ("migrate", 2), None])
    await collect(fleet, request())
    first_choice = [route.links[0].replica for _, route in fleet.calls]
    assert first_choice == ["A", "B", "C"]
    assert [t.replica for t in fleet.calls[2][1].links] == ["C"]


async def test_resumes_are_bounded_and_end_in_a_503_never_a_stop():
    fleet = FlakyFleet([("actor", 1)] * 10)
    got: list[int] = []
    with pytest.raises(ServiceUnavailableError, match="could not be resumed after 3 attempts"):
        async for out in resumable_stream(fleet, request(), Route("m"), lambda avoid: Route("m"), NO_WAIT):
            got += out.token_ids_delta
    assert len(fleet.calls) == 4 and got == reference("job-0", 12)[:4]


async def test_no_replica_to_route_to_counts_as_an_attempt():
    fleet = FlakyFleet([("lost", 2)])
    routes = iter([ServiceUnavailableError("no replica of `m` is ready"), Route("m", None, REPLICAS)])

    def reroute(avoid):
        r = next(routes)
        if isinstance(r, Exception):
            raise r
        return r

    outs = [o async for o in resumable_stream(fleet, request(), Route("m", None, REPLICAS), reroute, NO_WAIT)]
    assert [t for o in outs for t in o.token_ids_delta] == reference("job-0", 12)
    assert fleet.calls[1][0].request_id == "job-0.r2"  # the failed route used attempt 1


async def test_what_is_not_the_replicas_fault_is_never_retried():
    fleet = FlakyFleet([("invalid", 0)])
    with pytest.raises(InvalidRequestError):
        await collect(fleet, request())
    assert len(fleet.calls) == 1


def test_backoff_doubles_and_a_migration_resumes_at_once():
    p = ResumePolicy(max_resumes=5, backoff_s=0.1, max_backoff_s=0.3)
    assert [p.delay(a, False) for a in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert p.delay(1, True) == 0.0 and p.delay(2, True) == 0.2


class FixedLinks:
    def check(self, model):
        return None

    def choose(self, model, prefix_key):
        return Route(model, prefix_key, REPLICAS)

    def replica_status(self):
        return []


async def test_through_the_service_usage_counts_each_token_once():
    """The request path: two choices, one migrated and one lost mid-stream; each choice's
    tokens arrive once, in order, and the accounting stage counts them once."""
    fleet = FlakyFleet([("migrate", 3), ("lost", 6), None, None])
    gk = OpenGatekeeper()
    service = InferenceService([ModelSpec("tiny \"m\"", "/x")], fleet, gk, router=FixedLinks(), resume=NO_WAIT)
    job = make_job(params=SamplingParams(max_tokens=10, seed=3))
    per_choice: dict[int, list[int]] = {0: [], 1: []}
    async with aclosing(service.run(job)) as events:
        async for ev in events:
            per_choice[ev.index] += ev.output.token_ids_delta
    assert per_choice == {0: reference("abc123-0", 10), 1: reference("abc123-1", 10)}
    assert gk.completed == 1
    counter = service.metrics.get(__import__("fleetserve.metrics.names", fromlist=["N"]).STREAM_RESUMES)
    assert sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")) == 2


def test_sampled_jobs_get_a_seed_at_the_ingress_greedy_ones_do_not():
    service = InferenceService([ModelSpec("m", "/x")], None, OpenGatekeeper())
    job = make_job()
    sampled = service.build_job(job.ctx, job.model, [[1, 2]], n=2, max_tokens=4, sampling={"temperature": 0.7})
    greedy = service.build_job(job.ctx, job.model, [[1, 2]], n=1, max_tokens=4, sampling={"temperature": 0.0})
    chosen = service.build_job(job.ctx, job.model, [[1, 2]], n=1, max_tokens=4, sampling={"seed": 42})
    assert sampled.params.seed is not None and 0 <= sampled.params.seed < 2**62
    assert greedy.params.seed is None and chosen.params.seed == 42
