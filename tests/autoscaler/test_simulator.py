from fleetserve.autoscaler.config import load_autoscaler_config
from fleetserve.autoscaler.simulator.compare import compare, format_table
from fleetserve.autoscaler.simulator.capacity_curve import DEFAULT_CURVE, load_curve_json
from dataclasses import replace

from fleetserve.autoscaler.simulator.scenarios import InterruptionWave, MarketChange, make_scenario, spike, spot_storm_flat
from fleetserve.autoscaler.simulator.workload import load_trace_csv, write_trace_csv

from tests.autoscaler.test_config import PROFILES


def small_spike(seed):
    return spike(seed=seed, base=4.0, duration_s=420.0, start_s=120.0, ramp_s=20.0, hold_s=120.0)


def test_same_seed_same_numbers_and_other_seed_differs():
    cfg = load_autoscaler_config(PROFILES / "balanced.yaml")
    a = compare(small_spike(3), cfg, seed=3).to_dict()
    b = compare(small_spike(3), cfg, seed=3).to_dict()
    c = compare(small_spike(4), cfg, seed=4).to_dict()
    assert a == b
    assert a != c


def test_spike_warm_pool_beats_ray_default_and_table_renders():
    cfg = load_autoscaler_config(PROFILES / "balanced.yaml")
    comp = compare(small_spike(0), cfg, seed=0)
    ours, ray, static = comp.results
    assert ours.activations > 0
    assert ours.focus_attainment > ray.focus_attainment
    assert "static-peak" in format_table(comp)


def test_spot_storm_migrates_instead_of_losing_requests():
    cfg = load_autoscaler_config(PROFILES / "cost-first.yaml")
    base = spot_storm_flat(seed=1, rate=40.0, duration_s=600.0)
    # Short notices (20 s, migration 15 s before): long requests must move to survive.
    sc = replace(base, waves=(InterruptionWave(300.0, 1.0, notice_s=20.0),), market=(MarketChange(300.0, False),))
    ours = compare(sc, cfg, seed=1).results[0]
    assert ours.interruptions > 0 and ours.replica_hours_spot > 0
    assert ours.lost == 0
    assert ours.retried > 0  # requests moved off reclaimed replicas


def test_trace_csv_round_trip(tmp_path):
    sc = make_scenario("steady", seed=2, duration_s=20.0)
    path = tmp_path / "t.csv"
    write_trace_csv(sc.requests, path)
    back = load_trace_csv(path)
    assert [(r.tenant_class, r.prompt_tokens, r.output_tokens) for r in back] == [
        (r.tenant_class, r.prompt_tokens, r.output_tokens) for r in sc.requests
    ]
    assert abs(back[-1].arrival - (sc.requests[-1].arrival - sc.requests[0].arrival)) < 1e-5


def test_capacity_curve_loads_from_benchmark_json(tmp_path):
    p = tmp_path / "curve.json"
    p.write_text('{"reference_prompt_tokens": 500, "points": [{"concurrency": 1, "throughput_tok_s": 50, "ttft_ms": 20},'
                 ' {"concurrency": 8, "throughput_tok_s": 200, "ttft_ms": 80}]}')
    curve = load_curve_json(p)
    assert curve.per_sequence_tok_s(8) == 25.0
    assert abs(curve.ttft_s(8, 500) - 0.08) < 1e-9
    assert DEFAULT_CURVE.per_sequence_tok_s(64) < DEFAULT_CURVE.per_sequence_tok_s(1)


def test_oracle_is_a_lower_bound_below_static_peak():
    cfg = load_autoscaler_config(PROFILES / "balanced.yaml")
    comp = compare(small_spike(0), cfg, seed=0)
    static = comp.by_policy("static-peak")
    # At least one replica for every minute with traffic, and less than peak all the time.
    assert comp.scenario.duration_s / 3600 <= comp.oracle_replica_hours < static.replica_hours
    assert "oracle" in format_table(comp)


def test_spot_storm_hits_a_fleet_running_on_spot_near_its_peak():
    sc = make_scenario("spot-storm", seed=0)
    first, second = (w.at for w in sc.waves)
    peak = max(sc.rate_fn(t) for t in range(0, int(sc.duration_s), 60))
    night = sc.rate_fn(0.0)
    # The storm lands on the day's plateau, not the night: that is when the fleet has burst onto spot.
    assert sc.rate_fn(first) >= 0.9 * peak and sc.rate_fn(second) >= 0.9 * peak and night <= 0.2 * peak
    assert [m.available for m in sc.market] == [False, True] and sc.market[0].at == first
    flat = make_scenario("spot-storm-flat", seed=0)
    assert flat.rate_fn(0.0) == flat.rate_fn(flat.duration_s / 2)  # the old flat storm is still there
