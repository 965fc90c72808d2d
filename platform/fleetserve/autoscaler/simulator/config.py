"""Simulated hardware and SLOs: what a replica costs in time, and what users expect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from fleetserve.autoscaler.simulator.capacity_curve import DEFAULT_CURVE, CapacityCurve


@dataclass(frozen=True)
class SimConfig:
    """Assumptions (see docs/autoscaler.md):

    * ``cold_start_s`` 120 s: schedule a pod on a node that is already up, stream 16 GB
      of weights from a node-local cache, initialise the engine and capture CUDA graphs.
    * ``activation_s`` 5 s: wake a sleeping engine whose weights sit in host memory
      (16 GB over PCIe in ~1 s) and warm it up.
    * ``slots`` 64: the engine's max concurrent sequences (Ray's ``max_ongoing_requests``).
    * ``graceful_shutdown_s`` 20 s: Ray Serve's default before a stopping replica is killed.
    """

    curve: CapacityCurve = DEFAULT_CURVE
    slots: int = 64
    cold_start_s: float = 120.0
    activation_s: float = 5.0
    graceful_shutdown_s: float = 20.0
    client_timeout_s: float = 600.0  # a request queued longer than this is abandoned (lost)
    tick_s: float = 1.0  # control-loop period for every controller
    rate_window_s: float = 10.0  # arrival rate reported to policies is measured over this
    sample_every_s: float = 10.0  # time-series resolution kept for plots
    ttft_slo_s: Dict[str, float] = field(default_factory=lambda: {"interactive": 1.5, "batch": 10.0})
    spot_price_ratio: float = 0.35  # spot price / on-demand price while available
