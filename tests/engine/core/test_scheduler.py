"""Scheduler against the real KV manager: budgets, chunked prefill, order, preemption."""

import pytest

from fleetserve.engine.core.request import RequestStatus
from fleetserve.engine.core.scheduler import choose_victim
from tests.engine.factories import (
    greedy,
    make_engine,
    make_generate_request,
    make_kv,
    make_request,
    make_runner,
    make_scheduler,
    run_to_completion,
)


def step(sched, token=7):
    """One scheduler step as the engine does it, sampling ``token`` for every finished
    prefill/decode and finishing requests at max_tokens."""
    out = sched.schedule()
    finish_step(sched, out, token)
    return out


def assert_all_free(sched):
    sched.kv.check_invariants([])
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    assert sched.kv.host_pool.num_free == sched.kv.host_pool.num_blocks


def test_chunked_prefill_respects_token_budget():
    sched = make_scheduler(max_num_batched_tokens=8)
    r = make_request(list(range(20)), max_tokens=2)
    sched.add(r)
    chunks = [step(sched).items[0] for _ in range(3)]
    assert [(c.start_pos, c.num_new_tokens, c.needs_logits) for c in chunks] == [
        (0, 8, False), (8, 8, False), (16, 4, True)
    ]
    assert r.output_token_ids == [7]
    decode = step(sched).items[0]
    assert (decode.start_pos, decode.num_new_tokens, decode.needs_logits) == (20, 1, True)
    assert r.status is RequestStatus.FINISHED_LENGTH
    assert_all_free(sched)


def test_running_decodes_go_first_and_waiting_prefill_gets_the_rest():
    sched = make_scheduler(max_num_batched_tokens=10)
    a = make_request(list(range(4)), max_tokens=5)
    sched.add(a)
    step(sched)                       # a prefilled, now decoding
    b = make_request(list(range(30)), max_tokens=1)
    sched.add(b)
    out = step(sched)
    assert [(i.request.request_id, i.num_new_tokens) for i in out.items] == [(a.request_id, 1), (b.request_id, 9)]
    assert out.num_batched_tokens == 10
    while sched.has_unfinished():
        step(sched)
    assert_all_free(sched)


def test_waiting_queue_orders_by_priority_then_arrival():
    sched = make_scheduler(max_num_seqs=1)
    reqs = [
        make_request([1, 2], max_tokens=1, priority=1, arrival_time=0.0, request_id="p1-early"),
        make_request([1, 2], max_tokens=1, priority=0, arrival_time=2.0, request_id="p0-late"),
        make_request([1, 2], max_tokens=1, priority=0, arrival_time=1.0, request_id="p0-early"),
        make_request([1, 2], max_tokens=1, priority=2, arrival_time=-1.0, request_id="p2"),
    ]
    for r in reqs:
        sched.add(r)
    order = []
    while sched.has_unfinished():
        order += [i.request.request_id for i in step(sched).items]
    assert order == ["p0-early", "p0-late", "p1-early", "p2"]
    assert_all_free(sched)


def test_choose_victim_is_lowest_priority_latest_arrival():
    reqs = [
        make_request(priority=0, arrival_time=9.0),
        make_request(priority=2, arrival_time=1.0),
        make_request(priority=2, arrival_time=3.0),
        make_request(priority=1, arrival_time=5.0),
    ]
    assert choose_victim(reqs) is reqs[2]


def test_block_exhaustion_preempts_lowest_priority_latest_arrival():
    # 6 blocks of 4 tokens; three requests of 8-token prompts use 2 blocks each; the first
    # decode (position 8) needs a third block each, so someone must go.
    sched = make_scheduler(make_kv(num_blocks=6, block_size=4), watermark_blocks=0)
    hi = make_request(list(range(8)), max_tokens=6, priority=0, arrival_time=3.0)
    lo_early = make_request(list(range(10, 18)), max_tokens=6, priority=1, arrival_time=1.0)
    lo_late = make_request(list(range(20, 28)), max_tokens=6, priority=1, arrival_time=2.0)
    for r in (lo_early, lo_late, hi):
        sched.add(r)
    step(sched)                                 # all three prefilled (6 blocks)
    out = step(sched)                           # decodes need new blocks
    assert out.preempted and out.preempted[0] is lo_late
    assert lo_late.status is RequestStatus.WAITING and lo_late.num_computed_tokens == 0
    assert lo_late.output_token_ids == [7]      # kept across preemption
    while sched.has_unfinished():
        step(sched)
    assert all(len(r.output_token_ids) == 6 for r in (hi, lo_early, lo_late))
    assert sched.num_preemptions >= 1
    assert_all_free(sched)


def test_higher_priority_waiting_request_evicts_worst_running_when_no_seq_slot():
    sched = make_scheduler(max_num_seqs=2)
    a = make_request([1, 2, 3], max_tokens=50, priority=2, arrival_time=0.0)
    b = make_request([4, 5, 6], max_tokens=50, priority=1, arrival_time=1.0)
    sched.add(a)
    sched.add(b)
    step(sched)
    urgent = make_request([7, 8, 9], max_tokens=1, priority=0, arrival_time=2.0)
    sched.add(urgent)
    out = step(sched)
    assert [r.request_id for r in out.preempted] == [a.request_id]
    assert urgent.status is RequestStatus.FINISHED_LENGTH
    # Same priority never preempts.
    same = make_request([1, 1, 1], max_tokens=1, priority=1, arrival_time=3.0)
    sched.add(same)
    out = step(sched)
    assert not out.preempted
    for r in list(sched.requests.values()):
        sched.finish(r, RequestStatus.FINISHED_ABORTED)
    assert_all_free(sched)


def test_abort_and_preempt_api():
    sched = make_scheduler()
    a = make_request([1, 2, 3], max_tokens=50)
    b = make_request([4, 5, 6], max_tokens=50)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert sched.preempt(a.request_id) is True
    assert a.status is RequestStatus.WAITING
    assert sched.preempt(a.request_id) is False        # not running any more
    assert sched.preempt("nope") is False
    out = step(sched)
    assert a in out.preempted
    assert sched.abort(b.request_id) is b and b.status is RequestStatus.FINISHED_ABORTED
    assert sched.abort(b.request_id) is None
    assert sched.abort(a.request_id) is a
    assert not sched.has_unfinished()
    assert_all_free(sched)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preempted_requests_resume_without_dropped_or_repeated_tokens(mode):
    # A pool too small for all requests at once forces preemptions; the fake runner
    # derives each token from the K/V it reads back, so outputs equal the reference only
    # when resumed K/V (recomputed or swapped back) is exactly right.
    runner = make_runner(block_size=4)
    engine = make_engine(runner, num_kv_blocks=12, max_num_seqs=6, max_num_batched_tokens=16,
                         preemption_mode=mode, swap_space_bytes=1024 * 64)
    prompts = [[(i * 7 + j) % 60 for j in range(5 + i)] for i in range(6)]
    for i, p in enumerate(prompts):
        engine.add_request(make_generate_request(request_id=f"q{i}", prompt_token_ids=p,
                                                 params=greedy(max_tokens=12), priority=i % 2))
    streams = run_to_completion(engine)
    assert engine.stats().num_preemptions > 0
    for i, p in enumerate(prompts):
        tokens = [t for o in streams[f"q{i}"] for t in o.token_ids_delta]
        assert tokens == runner.reference(p, 12)
        assert streams[f"q{i}"][-1].finish_reason == "length"
    if mode == "swap":
        assert runner.num_swapped_out > 0 and runner.num_swapped_in == runner.num_swapped_out
    engine.kv.check_invariants([])
    assert engine.kv.num_used_blocks == 0


def test_prefix_cache_hit_reuses_blocks_and_keeps_output():
    runner = make_runner(block_size=4)
    engine = make_engine(runner)
    prompt = list(range(1, 14))
    engine.add_request(make_generate_request(request_id="a", prompt_token_ids=prompt))
    first = run_to_completion(engine)["a"]
    engine.add_request(make_generate_request(request_id="b", prompt_token_ids=prompt))
    engine.add_request(make_generate_request(request_id="c", prompt_token_ids=prompt, cache_salt="other"))
    streams = run_to_completion(engine)
    assert streams["b"][-1].cached_prompt_tokens == 12
    assert streams["c"][-1].cached_prompt_tokens == 0       # another tenant's salt: miss
    ref = runner.reference(prompt, 8)
    for s in (first, streams["b"], streams["c"]):
        assert [t for o in s for t in o.token_ids_delta] == ref
    stats = engine.stats()
    assert stats.prefix_cache_hits == 12 and stats.prefix_cache_queries == 39
    assert engine.kv.num_used_blocks == 0


def test_reset_all_to_waiting_drops_device_and_host_blocks():
    sched = make_scheduler(make_kv(num_blocks=6, block_size=4, num_host_blocks=8), preemption_mode="swap",
                           watermark_blocks=0)
    reqs = [make_request(list(range(i, i + 8)), max_tokens=6) for i in range(3)]
    for r in reqs:
        sched.add(r)
    step(sched)
    step(sched)                       # decodes need blocks: one request is swapped out
    assert sched.num_swapped == 1
    sched.reset_all_to_waiting()      # engine sleep: KV memory is about to go away
    assert sched.num_running == 0 and sched.num_waiting == 3
    assert all(r.num_computed_tokens == 0 for r in reqs)
    assert_all_free(sched)
    while sched.has_unfinished():
        step(sched)
    assert all(r.num_output_tokens == 6 for r in reqs)
    assert_all_free(sched)


def test_higher_class_prefill_goes_before_a_lower_class_chunked_prefill():
    sched = make_scheduler(max_num_batched_tokens=8)
    low = make_request(list(range(40)), max_tokens=1, priority=2, arrival_time=0.0)
    sched.add(low)
    step(sched)                                   # low: first chunk of 8
    high = make_request(list(range(50, 56)), max_tokens=1, priority=0, arrival_time=1.0)
    sched.add(high)
    out = step(sched)
    assert [(i.request.request_id, i.num_new_tokens) for i in out.items] == [
        (high.request_id, 6), (low.request_id, 2)  # low only gets the leftover budget
    ]
    assert high.status is RequestStatus.FINISHED_LENGTH
    while sched.has_unfinished():
        step(sched)
    assert low.num_output_tokens == 1
    assert_all_free(sched)


def test_isolated_priority_prefill_gets_a_step_of_its_own():
    sched = make_scheduler(isolate_priority_prefill=True, max_num_batched_tokens=64)
    batch = [make_request(list(range(i, i + 4)), max_tokens=20, priority=2) for i in range(3)]
    for r in batch:
        sched.add(r)
    step(sched)                                          # batch prefilled, decoding
    urgent = make_request(list(range(50, 60)), max_tokens=4, priority=0)
    late_batch = make_request([9, 9, 9], max_tokens=2, priority=2)
    sched.add(urgent)
    sched.add(late_batch)
    out = step(sched)
    assert [(i.request.request_id, i.num_new_tokens) for i in out.items] == [(urgent.request_id, 10)]
    assert urgent.output_token_ids == [7] and sched.num_isolated_steps == 1
    # A second premium arrives while the first decodes: never two isolated steps in a row.
    again = make_request([5, 5], max_tokens=1, priority=0)
    sched.add(again)
    out = step(sched)
    ids = [i.request.request_id for i in out.items]
    assert ids[0] == urgent.request_id and set(ids) == {urgent.request_id, again.request_id, late_batch.request_id,
                                                         *(r.request_id for r in batch)}
    # The next one gets an isolated step with the running premium's decode, not the batch's.
    third = make_request([6, 6, 6], max_tokens=1, priority=0)
    sched.add(third)
    out = step(sched)
    assert [i.request.request_id for i in out.items] == [urgent.request_id, third.request_id]
    assert sched.num_isolated_steps == 2
    while sched.has_unfinished():
        step(sched)
    assert all(len(r.output_token_ids) == 20 for r in batch) and len(urgent.output_token_ids) == 4
    assert_all_free(sched)


def test_isolated_steps_leave_worse_classes_every_other_step():
    sched = make_scheduler(make_kv(num_blocks=1024), isolate_priority_prefill=True, max_num_seqs=64, max_num_batched_tokens=256)
    lo = make_request([1, 2, 3], max_tokens=30, priority=2)
    sched.add(lo)
    step(sched)
    lo_steps = 0
    for k in range(20):  # a premium arrival before every step
        sched.add(make_request([k + 10, 4], max_tokens=50, priority=0))
        lo_steps += any(i.request is lo for i in step(sched).items)
    assert lo_steps == 10 and sched.num_isolated_steps == 10


def test_consecutive_isolated_steps_are_capped_by_config():
    sched = make_scheduler(make_kv(num_blocks=1024), isolate_priority_prefill=True, max_num_seqs=64,
                           max_num_batched_tokens=256, max_consecutive_isolated=2)
    lo = make_request([1, 2, 3], max_tokens=30, priority=2)
    sched.add(lo)
    step(sched)
    pattern = []
    for k in range(12):  # a premium arrival before every step
        sched.add(make_request([k + 10, 4], max_tokens=50, priority=0))
        pattern.append(any(i.request is lo for i in step(sched).items))
    # Two isolated steps (each a new premium's first token on its own), then one for everyone.
    assert pattern == [False, False, True] * 4 and sched.num_isolated_steps == 8


def test_a_second_arrival_during_an_isolated_step_gets_one_too():
    sched = make_scheduler(isolate_priority_prefill=True, max_num_batched_tokens=64, max_consecutive_isolated=2)
    batch = [make_request(list(range(i, i + 4)), max_tokens=20, priority=2) for i in range(3)]
    for r in batch:
        sched.add(r)
    step(sched)
    first = make_request(list(range(50, 60)), max_tokens=4, priority=0)
    sched.add(first)
    assert [i.request.request_id for i in step(sched).items] == [first.request_id]
    second = make_request([5, 5], max_tokens=4, priority=0)
    sched.add(second)
    # The running premium's decode and the new one's prefill; the batch waits one more step.
    assert [i.request.request_id for i in step(sched).items] == [first.request_id, second.request_id]
    assert sched.num_isolated_steps == 2
    while sched.has_unfinished():
        step(sched)
    assert all(len(r.output_token_ids) == 20 for r in batch)
    assert_all_free(sched)


def test_without_isolation_the_priority_prefill_shares_the_step():
    sched = make_scheduler(max_num_batched_tokens=64)
    lo = make_request([1, 2, 3], max_tokens=5, priority=2)
    sched.add(lo)
    step(sched)
    hi = make_request([4, 5, 6], max_tokens=1, priority=0)
    sched.add(hi)
    assert {i.request.request_id for i in step(sched).items} == {lo.request_id, hi.request_id}


def finish_step(sched, out, token=7):
    """The second half of ``step`` for an ``out`` scheduled earlier (a paused step)."""
    sched.on_step_done(out)
    for item in out.items:
        r = item.request
        if item.needs_logits and r.status is RequestStatus.RUNNING:
            r.append_token(token)
            if r.num_output_tokens >= r.max_tokens:
                sched.finish(r, RequestStatus.FINISHED_LENGTH)


def test_side_prefill_starts_a_better_class_while_a_step_is_paused():
    sched = make_scheduler(side_prefill=True, max_num_batched_tokens=64)
    batch = [make_request(list(range(i, i + 4)), max_tokens=20, priority=2) for i in range(3)]
    for r in batch:
        sched.add(r)
    step(sched)                                          # batch prefilled, decoding
    paused = sched.schedule()                            # the batch's next step; its pass "pauses"
    paused_blocks = {b for r in batch for b in sched.kv.block_table(r.request_id)}
    late_batch = make_request([9, 9, 9], max_tokens=2, priority=2)
    urgent = make_request(list(range(50, 60)), max_tokens=4, priority=0)
    urgent2 = make_request([5, 5], max_tokens=3, priority=0)
    for r in (late_batch, urgent, urgent2):
        sched.add(r)
    side = sched.schedule_side_prefill()
    # Only the better class's fresh requests, prefill only; the paused step's blocks untouched.
    assert [(i.request.request_id, i.start_pos, i.num_new_tokens) for i in side.items] == [
        (urgent.request_id, 0, 10), (urgent2.request_id, 0, 2)]
    assert sched.num_side_prefills == 1 and side.num_batched_tokens == 12
    side_blocks = {b for r in (urgent, urgent2) for b in sched.kv.block_table(r.request_id)}
    assert not side_blocks & paused_blocks
    finish_step(sched, side, token=3)
    assert urgent.output_token_ids == [3] and urgent2.output_token_ids == [3]
    finish_step(sched, paused)                           # the paused step completes as scheduled
    assert all(r.output_token_ids == [7, 7] for r in batch)
    # The batch-class late arrival gets no side step; the next normal step serves everyone.
    assert sched.schedule_side_prefill().is_empty and sched.num_side_prefills == 1
    ids = {i.request.request_id for i in step(sched).items}
    assert ids == {late_batch.request_id, urgent.request_id, urgent2.request_id, *(r.request_id for r in batch)}
    while sched.has_unfinished():
        step(sched)
    assert all(len(r.output_token_ids) == 20 for r in batch) and len(urgent.output_token_ids) == 4
    assert_all_free(sched)


def test_same_class_side_prefill_up_to_a_class_when_nothing_better_runs():
    # Premium (0) decodes only: a premium arrival is prefilled on the side; a standard (1)
    # arrival is not (above the setting), nor is anything while a better class runs.
    sched = make_scheduler(side_prefill=True, max_num_batched_tokens=64, same_class_side_prefill_max=0)
    running = [make_request(list(range(i, i + 4)), max_tokens=20, priority=0) for i in range(2)]
    for r in running:
        sched.add(r)
    step(sched)
    paused = sched.schedule()
    std = make_request([9, 9, 9], max_tokens=2, priority=1)
    sched.add(std)
    assert sched.schedule_side_prefill().is_empty
    arrival = make_request(list(range(40, 46)), max_tokens=3, priority=0)
    sched.add(arrival)
    side = sched.schedule_side_prefill()
    assert [(i.request.request_id, i.start_pos, i.num_new_tokens) for i in side.items] == [(arrival.request_id, 0, 6)]
    finish_step(sched, side, token=3)
    finish_step(sched, paused)
    assert arrival.output_token_ids == [3] and all(r.output_token_ids == [7, 7] for r in running)
    # Off (the scheduler's default): same class waits for the next step, as before.
    sched = make_scheduler(side_prefill=True, max_num_batched_tokens=64)
    sched.add(make_request([1, 2, 3], max_tokens=30, priority=0))
    step(sched)
    sched.add(make_request([4, 5], max_tokens=2, priority=0))
    assert sched.schedule_side_prefill().is_empty
    # A better class running: a class-1 arrival gets no side step even with the setting at 1.
    sched = make_scheduler(side_prefill=True, max_num_batched_tokens=64, same_class_side_prefill_max=1)
    sched.add(make_request([1, 2, 3], max_tokens=30, priority=0))
    sched.add(make_request([1, 2, 4], max_tokens=30, priority=1))
    step(sched)
    sched.add(make_request([4, 5], max_tokens=2, priority=1))
    assert sched.schedule_side_prefill().is_empty
    while sched.has_unfinished():
        step(sched)
    assert_all_free(sched)


def test_side_prefill_never_preempts_and_skips_resumed_requests():
    # No room: a side prefill never evicts anyone (the paused step's requests hold their blocks).
    sched = make_scheduler(make_kv(num_blocks=4), side_prefill=True, max_num_batched_tokens=64)
    lo = make_request(list(range(12)), max_tokens=30, priority=2)
    sched.add(lo)
    step(sched)
    sched.add(make_request(list(range(20, 32)), max_tokens=2, priority=0))
    assert sched.schedule_side_prefill().is_empty and sched.num_preemptions == 0
    # A preempted request resuming is not a first token: no side prefill for it.
    sched = make_scheduler(side_prefill=True, max_num_batched_tokens=64)
    lo, mid = make_request([1, 2, 3], max_tokens=30, priority=2), make_request([4, 5, 6], max_tokens=30, priority=1)
    sched.add(lo)
    sched.add(mid)
    step(sched)
    assert sched.preempt(mid.request_id)
    assert sched.schedule_side_prefill().is_empty
    # And switched off, never.
    sched = make_scheduler(max_num_batched_tokens=64)
    sched.add(make_request([1, 2, 3], max_tokens=30, priority=2))
    step(sched)
    sched.add(make_request([4, 5], max_tokens=2, priority=0))
    assert sched.schedule_side_prefill().is_empty
