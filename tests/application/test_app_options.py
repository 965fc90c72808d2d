"""Serve options derived from the fleet config (no Ray needed)."""

from fleetserve.config import parse_config
from fleetserve.application.build import (INGRESS_MAX_ONGOING, model_options, ingress_graceful_shutdown_s,
                                          ingress_max_ongoing)


def make_cfg(scheduling: dict, max_replicas: int = 1):
    return parse_config({
        "models": [{"name": "m", "checkpoint": "/nonexistent", "replicas": {"num": 1, "max": max_replicas}}],
        "tenants": {"scheduling": scheduling},
    })


def test_ingress_accepts_more_than_the_fleet_can_hold():
    # Requests past Serve's cap wait there in arrival order, before any tenant is known, so
    # the fleet's queue (which sheds the lowest class first) must fill before the cap does.
    cfg = make_cfg({"max_queue_total": 4096, "max_queue_per_class": 2048, "max_inflight_per_replica": 16}, max_replicas=3)
    assert ingress_max_ongoing(cfg) > 4096 + 3 * 16


def test_ingress_cap_has_a_floor_for_small_queues():
    assert ingress_max_ongoing(make_cfg({"max_queue_total": 8})) == INGRESS_MAX_ONGOING


def test_the_ingress_waits_for_streams_as_long_as_the_slowest_model_drains():
    cfg = parse_config({"models": [{"name": "a", "checkpoint": "/x", "drain_timeout_s": 30},
                                   {"name": "b", "checkpoint": "/y", "drain_timeout_s": 90}]})
    assert ingress_graceful_shutdown_s(cfg) == 95.0 > 20.0  # Serve's default would cut b's streams at 20 s
    assert ingress_graceful_shutdown_s(cfg) >= max(model_options(m, cfg)["graceful_shutdown_timeout_s"] for m in cfg.models)


def test_under_the_controller_a_model_starts_at_its_planned_count():
    cfg = parse_config({
        "models": [{"name": "m", "checkpoint": "/x", "replicas": {"num": 1, "min": 1, "max": 3}}],
        "autoscaler": {"controller": True, "defaults": {"scaling": {"min_replicas": 1, "max_replicas": 3},
                                                        "warm_pool": {"min_size": 1, "max_size": 1}}}})
    m = cfg.models[0]
    assert model_options(m, cfg)["autoscaling_config"].initial_replicas == 2  # one serving, one standby
