"""The fleet admission policy, decided on snapshots with explicit times (no clocks, no I/O)."""

from fleetserve.admission import policy as admission
from fleetserve.admission.policy import AdmissionState, ReplicaCapacity
from tests.admission.factories import make_config, queued, running, snapshot


def dispatched(decision):
    return [d.request_id for d in decision.dispatch]


def drain(queue, config, slots_per_round=1, now=50.0, rounds=20):
    """Dispatch one request per round (capacity 1), returning the order of dispatch."""
    state, order, queue = AdmissionState(), [], list(queue)
    for _ in range(rounds):
        if not queue:
            break
        d = admission.decide(snapshot(queue, replicas=[ReplicaCapacity("r0")]), state, now,
                             config.model_copy(update={"max_inflight_per_replica": slots_per_round}))
        state = d.state
        order += dispatched(d)
        queue = [q for q in queue if q.request_id not in set(dispatched(d))]
    return order


def test_strict_priority_between_classes():
    q = [queued("b1", cls=2, at=0), queued("s1", cls=1, at=1), queued("p1", cls=0, at=2), queued("b2", cls=2, at=3)]
    assert drain(q, make_config()) == ["p1", "s1", "b1", "b2"]


def test_fcfs_policy_ignores_classes():
    q = [queued("b1", cls=2, at=0), queued("p1", cls=0, at=1)]
    assert drain(q, make_config(policy="fcfs")) == ["b1", "p1"]


def test_starvation_guard_every_k_dispatches():
    q = [queued("b1", cls=2, at=0)] + [queued(f"p{i}", cls=0, at=1 + i) for i in range(6)]
    order = drain(q, make_config(starvation_every_k=3))
    assert order.index("b1") == 3  # after 3 premium dispatches the batch class gets one slot


def test_starvation_guard_by_wait_time():
    q = [queued("b1", cls=2, at=0), queued("p1", cls=0, at=45)]
    cfg = make_config(starvation_max_wait_s=10.0)
    d = admission.decide(snapshot(q, replicas=[ReplicaCapacity("r0")]), AdmissionState(), 50.0,
                         cfg.model_copy(update={"max_inflight_per_replica": 1}))
    assert dispatched(d) == ["b1"]  # waited 50s > 10s
    d = admission.decide(snapshot(q, replicas=[ReplicaCapacity("r0")]), AdmissionState(), 5.0,
                         cfg.model_copy(update={"max_inflight_per_replica": 1}))
    assert dispatched(d) == ["p1"]  # at t=5 batch has waited only 5s


def test_vtc_alternates_tenants_within_a_class():
    q = [queued(f"a{i}", tenant="a", at=i) for i in range(4)] + [queued(f"b{i}", tenant="b", at=10 + i) for i in range(2)]
    order = drain(q, make_config())
    assert order[:4] == ["a0", "b0", "a1", "b1"]  # b arrived later but gets its fair share


def test_dispatch_respects_replica_capacity_and_spreads():
    q = [queued(f"q{i}", at=i) for i in range(10)]
    reps = [ReplicaCapacity("r0"), ReplicaCapacity("r1", kv_usage=0.99), ReplicaCapacity("r2", healthy=False),
            ReplicaCapacity("r3", num_waiting=4), ReplicaCapacity("r4", accepting=False), ReplicaCapacity("r5")]
    d = admission.decide(snapshot(q, running=[running("x", cls=1, replica="r0")], replicas=reps), AdmissionState(), 0.0, make_config())
    assert [x.replica_id for x in d.dispatch] == ["r5", "r0", "r5"]  # r0 had 1 of 2 in flight
    assert admission.decide(snapshot(q, replicas=[]), AdmissionState(), 0.0, make_config()).dispatch == ()


def test_preempted_requests_do_not_hold_slots():
    q = [queued("p", cls=0)]
    full = [running("x1"), running("x2", preempted=True), running("x3")]
    d = admission.decide(snapshot(q, running=full, replicas=[ReplicaCapacity("r0", num_waiting=1)]), AdmissionState(), 0.0,
                         make_config(max_inflight_per_replica=3))
    assert dispatched(d) == ["p"]


def test_deadline_sheds_with_503_and_retry_after():
    q = [queued("late", deadline=5.0), queued("ok", deadline=50.0)]
    d = admission.decide(snapshot(q, replicas=[]), AdmissionState(), 10.0, make_config())
    assert [(s.request_id, s.status) for s in d.shed] == [("late", 503)]
    assert d.shed[0].retry_after_s >= 1.0


def test_enqueue_sheds_lowest_class_first():
    cfg = make_config(max_queue_total=3, max_queue_per_class=3)
    q = [queued("s1", cls=1, at=0), queued("b1", cls=2, at=1), queued("b2", cls=2, at=2)]
    # a premium newcomer displaces the newest batch request (503)
    v = admission.decide_enqueue(snapshot(q), queued("p1", cls=0, at=3), cfg)
    assert v.accept and [(s.request_id, s.status) for s in v.evict] == [("b2", 503)]
    # a batch newcomer finds nothing lower: rejected with 429
    v = admission.decide_enqueue(snapshot(q), queued("b3", cls=2, at=3), cfg)
    assert not v.accept and v.reject.status == 429 and v.reject.retry_after_s > 0
    # a standard newcomer displaces batch, never standard
    v = admission.decide_enqueue(snapshot(q), queued("s2", cls=1, at=3), cfg)
    assert [s.request_id for s in v.evict] == ["b2"]


def test_enqueue_per_class_bound():
    cfg = make_config(max_queue_per_class=2, max_queue_total=100)
    q = [queued("p1", cls=0), queued("p2", cls=0), queued("b1", cls=2)]
    assert not admission.decide_enqueue(snapshot(q), queued("p3", cls=0), cfg).accept
    assert admission.decide_enqueue(snapshot(q), queued("s1", cls=1), cfg).accept


def test_preemption_picks_lowest_class_most_recent():
    q = [queued("p1", cls=0, at=10.0)]
    run = [running("s-old", cls=1, at=1.0), running("b-old", cls=2, at=2.0), running("b-new", cls=2, at=3.0),
           running("p-run", cls=0, at=4.0)]
    reps = [ReplicaCapacity("r0")]
    cfg = make_config(max_inflight_per_replica=4, preempt_via="replica_call")
    d = admission.decide(snapshot(q, running=run, replicas=reps), AdmissionState(), 10.0, cfg)
    assert d.dispatch == () and [(p.request_id, p.replica_id, p.by_engine) for p in d.preempt] == [("b-new", "r0", False)]
    # Next round within the cooldown: the pending preemption covers the waiter, nothing new.
    d2 = admission.decide(snapshot(q, running=run, replicas=reps), d.state, 10.2, cfg)
    assert d2.preempt == ()
    # After the cooldown it asks again, for the next victim.
    d3 = admission.decide(snapshot(q, running=run, replicas=reps), d2.state, 11.0, cfg)
    assert [p.request_id for p in d3.preempt] == ["b-new"]


def test_no_preemption_of_equal_or_higher_class_or_when_off():
    q = [queued("s1", cls=1)]
    run = [running("s-run", cls=1), running("p-run", cls=0)]
    cfg = make_config(max_inflight_per_replica=2)
    assert admission.decide(snapshot(q, running=run), AdmissionState(), 0.0, cfg).preempt == ()
    run2 = [running("b-run", cls=2), running("p-run", cls=0)]
    assert admission.decide(snapshot(q, running=run2), AdmissionState(), 0.0, cfg.model_copy(update={"preemption": False})).preempt == ()
    assert admission.decide(snapshot(q, running=run2), AdmissionState(), 0.0, cfg.model_copy(update={"policy": "fcfs"})).preempt == ()
    assert [p.request_id for p in admission.decide(snapshot(q, running=run2), AdmissionState(), 0.0, cfg).preempt] == ["b-run"]


def test_engine_preemption_dispatches_the_waiter_at_once():
    q = [queued("p1", cls=0, at=10.0), queued("p2", cls=0, at=11.0)]
    run = [running("b-old", cls=2, at=2.0, replica="r0"), running("b-new", cls=2, at=3.0, replica="r1")]
    reps = [ReplicaCapacity("r0"), ReplicaCapacity("r1")]
    cfg = make_config(max_inflight_per_replica=1)  # preempt_via="engine" is the default
    d = admission.decide(snapshot(q, running=run, replicas=reps), AdmissionState(), 10.0, cfg)
    # Each waiter goes straight to its victim's replica; that engine preempts at its next step.
    assert [(x.request_id, x.replica_id) for x in d.dispatch] == [("p1", "r1"), ("p2", "r0")]
    assert [(p.request_id, p.by_engine) for p in d.preempt] == [("b-new", True), ("b-old", True)]
    assert d.state.pending_preemptions == {}  # nothing to wait for
    # A victim on a replica that cannot take work (KV full) falls back to asking the replica.
    full = [ReplicaCapacity("r0", kv_usage=0.99)]
    d2 = admission.decide(snapshot(q[:1], running=run[:1], replicas=full), AdmissionState(), 10.0, cfg)
    assert d2.dispatch == () and [(p.request_id, p.by_engine) for p in d2.preempt] == [("b-old", False)]


def test_preemption_respects_per_replica_cap():
    q = [queued("p1", cls=0), queued("p2", cls=0)]
    run = [running("b1", cls=2, replica="r0"), running("b2", cls=2, replica="r0"), running("b0", cls=2, replica="r0", preempted=True)]
    cfg = make_config(max_inflight_per_replica=2, max_preempted_per_replica=2)
    d = admission.decide(snapshot(q, running=run), AdmissionState(), 0.0, cfg)
    assert len(d.preempt) == 1  # one already preempted on r0, cap 2


def test_trunk_reservation_keeps_top_slots_for_higher_classes():
    cfg = make_config(max_inflight_per_replica=4, class_slot_share={0: 1.0, 1: 0.75, 2: 0.5})
    q = [queued(f"b{i}", cls=2, at=i) for i in range(4)] + [queued("s1", cls=1, at=5)]
    d = admission.decide(snapshot(q), AdmissionState(), 10.0, cfg)
    assert dispatched(d) == ["s1", "b0"]  # batch stops at 2 busy slots, standard at 3
    busy = [running(x, cls=2) for x in ("b0",)] + [running("s1", cls=1)]
    later = admission.decide(snapshot(q[1:4] + [queued("p1", cls=0, at=11)], running=busy), d.state, 12.0, cfg)
    assert dispatched(later) == ["p1"] and later.preempt == ()  # premium starts at once, no preemption needed
    fcfs = admission.decide(snapshot(q), AdmissionState(), 10.0, cfg.model_copy(update={"policy": "fcfs"}))
    assert len(fcfs.dispatch) == 4  # no reservation in the fcfs baseline


def test_arrival_may_act_only_when_it_could_dispatch_or_preempt():
    cfg = make_config(max_inflight_per_replica=2)
    full = [running("b0", cls=2, replica="r0"), running("b1", cls=2, replica="r0")]
    reps = [ReplicaCapacity("r0")]
    # A batch arrival to a full replica running batch work: nothing to dispatch or preempt.
    assert not admission.arrival_may_act(snapshot([], full, reps), queued("b2", cls=2), cfg)
    # A premium arrival can preempt batch work; with preemption off it cannot.
    assert admission.arrival_may_act(snapshot([], full, reps), queued("p0", cls=0), cfg)
    assert not admission.arrival_may_act(snapshot([], full, reps), queued("p0", cls=0), make_config(max_inflight_per_replica=2, preemption=False))
    # Room on the replica: any arrival may be dispatched.
    assert admission.arrival_may_act(snapshot([], full[:1], reps), queued("b2", cls=2), cfg)


def test_grouped_dispatch_keeps_class_order_vtc_and_preemption_over_a_long_queue():
    # 600 queued batch requests of three tenants and one premium: one free slot goes to the
    # premium; the next rounds alternate batch tenants by VTC, oldest first within a tenant.
    q = [queued(f"b{t}-{i}", cls=2, tenant=f"t{t}", at=i * 3 + t) for i in range(200) for t in range(3)]
    q.append(queued("p", cls=0, at=1000))
    order = drain(q, make_config(), rounds=4)
    assert order == ["p", "b0-0", "b1-0", "b2-0"]
