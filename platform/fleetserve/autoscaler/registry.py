"""Autoscaling policies by name, so configs can say ``policy: fleetserve``."""

from __future__ import annotations

from typing import Callable, Dict, List

from fleetserve.autoscaler.config import ModelPolicyConfig
from fleetserve.autoscaler.policy import FleetservePolicy
from fleetserve.errors import ConfigError

PolicyFactory = Callable[[ModelPolicyConfig], FleetservePolicy]

_POLICIES: Dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    if name in _POLICIES:
        raise ValueError(f"autoscaling policy {name!r} is already registered")
    _POLICIES[name] = factory


def make_policy(config: ModelPolicyConfig) -> FleetservePolicy:
    try:
        factory = _POLICIES[config.policy]
    except KeyError:
        raise ConfigError(
            f"unknown autoscaling policy {config.policy!r}; known: {', '.join(sorted(_POLICIES))}", field="policy"
        ) from None
    return factory(config)


def policy_names() -> List[str]:
    return sorted(_POLICIES)


register_policy(FleetservePolicy.name, FleetservePolicy)
