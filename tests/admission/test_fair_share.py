"""VTC fair share: lifting, weights, and the service-gap bound (see fair_share's docstring)."""

import random

from fleetserve.admission import fair_share
from fleetserve.admission.fair_share import VtcState


def test_pick_smallest_counter_ties_by_id():
    s = VtcState({"a": 5.0, "b": 3.0, "c": 3.0})
    assert fair_share.pick(s, ["a", "b", "c"]) == "b"
    assert fair_share.pick(s, ["a"]) == "a"


def test_arrival_lifts_returning_tenant_to_min_backlogged():
    s = VtcState({"a": 100.0, "b": 80.0, "idle": 5.0})
    s2 = fair_share.on_arrival(s, "idle", backlogged={"a", "b"})
    assert s2.counter("idle") == 80.0  # no credit banked while idle
    # already backlogged: unchanged; higher counter: unchanged
    assert fair_share.on_arrival(s, "a", backlogged={"a", "b"}) is s
    assert fair_share.on_arrival(VtcState({"a": 200.0}, 0.0), "a", backlogged={"b"}).counter("a") == 200.0
    # empty queue: lifted to the counter of the last tenant served
    s3 = fair_share.charge(VtcState(), "b", 50, 1.0, served=True)
    assert fair_share.on_arrival(s3, "new", backlogged=set()).counter("new") == 50.0


def test_weights_divide_the_charge():
    s = fair_share.charge(VtcState(), "heavy", 100, weight=2.0)
    assert s.counter("heavy") == 50.0


def _simulate(policy: str, seed: int, slots: int, l_in: int, l_out: int, weights=None, steps=4000, arrivals=None):
    """A fleet with ``slots`` concurrent slots; each request runs ``output`` ticks.

    Both tenants always have requests queued (backlogged). Service is counted as the VTC
    charges are made: input at dispatch, output at completion. Returns (max |W_a - W_b| over
    all prefixes of the run, final service per tenant).
    """
    rng = random.Random(seed)
    weights = weights or {"a": 1.0, "b": 1.0}
    arrivals = arrivals or {"a": 1, "b": 1}
    state = VtcState()
    queue = []  # FCFS order for the baseline: arrivals interleaved by ratio
    for i in range(steps):
        for t, n in arrivals.items():
            queue.extend([t] * n)
    running = []  # (finish_tick, tenant, output)
    service = {"a": 0, "b": 0}
    max_gap = 0.0
    for tick in range(steps):
        for job in [j for j in running if j[0] <= tick]:
            running.remove(job)
            _, t, out = job
            state = fair_share.charge(state, t, out, weights[t])
            service[t] += out
        while len(running) < slots:
            if policy == "vtc":
                t = fair_share.pick(state, ["a", "b"])
            else:
                t = queue.pop(0)
            inp, out = rng.randint(1, l_in), rng.randint(1, l_out)
            state = fair_share.charge(state, t, inp, weights[t], served=True)
            service[t] += inp
            running.append((tick + out, t, out))
        gap = abs(service["a"] / weights["a"] - service["b"] / weights["b"])
        max_gap = max(max_gap, gap)
    return max_gap, service


def test_vtc_service_gap_within_theoretical_bound():
    l_in, l_out, slots = 64, 32, 4
    # D = L_in + S * L_out, with S = slots (one tenant can hold every slot); gap <= 2 D.
    bound = 2 * (l_in + slots * l_out)
    for seed in range(5):
        gap, service = _simulate("vtc", seed, slots, l_in, l_out)
        assert gap <= bound, (seed, gap, bound)
        assert min(service.values()) > 0


def test_fcfs_with_a_flooding_tenant_breaks_the_bound_vtc_does_not():
    # Tenant b submits 3x as many requests: FCFS gives it ~3x the service; VTC stays fair.
    l_in, l_out, slots = 64, 32, 4
    bound = 2 * (l_in + slots * l_out)
    fcfs_gap, fcfs_service = _simulate("fcfs", 1, slots, l_in, l_out, arrivals={"a": 1, "b": 3}, steps=2000)
    vtc_gap, vtc_service = _simulate("vtc", 1, slots, l_in, l_out, arrivals={"a": 1, "b": 3}, steps=2000)
    assert fcfs_gap > 10 * bound and fcfs_service["b"] > 2.5 * fcfs_service["a"]
    assert vtc_gap <= bound


def test_weighted_share_follows_weights():
    _, service = _simulate("vtc", 3, 4, 64, 32, weights={"a": 1.0, "b": 3.0}, steps=3000)
    ratio = service["b"] / service["a"]
    assert 2.8 < ratio < 3.2, ratio
