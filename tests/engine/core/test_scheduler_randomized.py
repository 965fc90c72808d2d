"""Seeded randomized run of the real scheduler + KV manager (fake runner), checking
invariants after every one of 10,000+ steps."""

import random

import pytest

from fleetserve.engine.core.request import RequestStatus
from tests.engine.factories import greedy, make_engine, make_generate_request, make_runner

STEPS = 10_000


def _random_request(rng, i, prefixes):
    prompt = list(rng.choice(prefixes)) + [rng.randrange(60) for _ in range(rng.randrange(1, 13))]
    return make_generate_request(
        request_id=f"x{i}",
        prompt_token_ids=prompt,
        params=greedy(max_tokens=rng.randrange(1, 17)),
        priority=rng.randrange(3),
        cache_salt=rng.choice([None, "a", "b"]),
        arrival_time=float(i),
    )


def _check_step(engine, out, running_before, waiting_before, api_preempted):
    sched = engine.scheduler
    live = list(sched.requests)
    engine.kv.check_invariants(live)
    assert len(sched.running) <= sched.max_num_seqs
    assert out.num_batched_tokens <= sched.max_num_batched_tokens
    assert not ({r.request_id for r in sched.running} & {r.request_id for r in sched.waiting})
    for r in sched.running:
        assert r.status is RequestStatus.RUNNING
    for r in sched.waiting:
        assert r.status in (RequestStatus.WAITING, RequestStatus.SWAPPED)
    # Admission follows (priority, arrival): whatever was admitted beats all still waiting.
    admitted = [it.request for it in out.items if it.request.request_id in waiting_before]
    if admitted and sched.waiting:
        assert max(r.sort_key for r in admitted) < min(r.sort_key for r in sched.waiting)
    # A victim is never better than a request left running.
    victims = [r for r in out.preempted if r.request_id not in api_preempted]
    for v in victims:
        for r in sched.running:
            assert r.sort_key < v.sort_key, f"preempted {v} while worse {r} kept running"


@pytest.mark.parametrize("mode,steps", [("recompute", STEPS), ("swap", 3_000)])
def test_randomized_invariants(mode, steps):
    rng = random.Random(1234)
    runner = make_runner(block_size=4)
    engine = make_engine(runner, num_kv_blocks=24, max_num_seqs=6, max_num_batched_tokens=16,
                         preemption_mode=mode, swap_space_bytes=16 * 1024)
    prefixes = [[rng.randrange(60) for _ in range(8)] for _ in range(3)]
    prompts, tokens, finished = {}, {}, {}
    n = 0
    steps_run = 0
    while steps_run < steps or engine.has_unfinished():
        if steps_run < steps and rng.random() < 0.45:
            req = _random_request(rng, n, prefixes)
            engine.add_request(req)
            prompts[req.request_id] = (req.prompt_token_ids, req.params.max_tokens)
            n += 1
        api_preempted = set()
        if engine.scheduler.running and rng.random() < 0.01:
            victim = rng.choice(engine.scheduler.running).request_id
            assert engine.preempt(victim)
            api_preempted.add(victim)
        if engine.scheduler.requests and rng.random() < 0.01:
            rid = rng.choice(list(engine.scheduler.requests))
            final = engine.abort(rid)
            finished[rid] = final.finish_reason
        running_before = {r.request_id for r in engine.scheduler.running}
        waiting_before = {r.request_id for r in engine.scheduler.waiting}
        outputs = engine.step()
        _check_step(engine, engine.last_scheduler_output, running_before, waiting_before, api_preempted)
        for o in outputs:
            assert o.request_id not in finished, "output after the request finished"
            tokens.setdefault(o.request_id, []).extend(o.token_ids_delta)
            if o.finished:
                finished[o.request_id] = o.finish_reason
        steps_run += 1
        assert steps_run < steps + 5_000, "requests did not finish"
    assert set(finished) == set(prompts), "every request finishes"
    for rid, (prompt, max_tokens) in prompts.items():
        ref = runner.reference(prompt, max_tokens)
        got = tokens.get(rid, [])
        if finished[rid] == "abort":
            assert got == ref[: len(got)]
        else:
            assert finished[rid] == "length" and got == ref, rid
    assert engine.stats().num_preemptions > 10
    assert engine.kv.prefix_hits > 0
    engine.kv.check_invariants([])
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert engine.kv.host_pool.num_free == engine.kv.host_pool.num_blocks
