"""Which capacity type new serving replicas go on: an on-demand base, spot for burst."""

from __future__ import annotations

from typing import List

from fleetserve.autoscaler.config import SpotConfig
from fleetserve.autoscaler.snapshot import CapacityType, SpotMarket


def spot_usable(cfg: SpotConfig, market: SpotMarket) -> bool:
    return cfg.enabled and market.available and market.price_ratio <= cfg.max_price_ratio


def place_new_replicas(count: int, on_demand: int, spot: int, cfg: SpotConfig, market: SpotMarket) -> List[CapacityType]:
    """Capacity types for ``count`` new serving replicas, given the ``on_demand`` and
    ``spot`` replicas that keep serving. Spot only above the on-demand base, within the
    share limit and the price ceiling; otherwise (spot unavailable too) on-demand."""
    types: List[CapacityType] = []
    usable = spot_usable(cfg, market)
    for _ in range(count):
        total_after = on_demand + spot + 1
        if usable and on_demand >= cfg.on_demand_base and (spot + 1) <= cfg.max_spot_share * total_after:
            types.append(CapacityType.SPOT)
            spot += 1
        else:
            types.append(CapacityType.ON_DEMAND)
            on_demand += 1
    return types


def spot_share_ok(on_demand: int, spot: int, cfg: SpotConfig) -> bool:
    total = on_demand + spot
    return total == 0 or spot <= cfg.max_spot_share * total + 1e-9
