"""Weighted fair share between tenants of one priority class: the Virtual Token Counter.

VTC (Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024): every tenant
has a counter of the service it received, in tokens divided by its weight. The dispatcher
always serves the backlogged tenant with the smallest counter. Cost = input + output
tokens: input tokens are charged when a request is dispatched, output tokens when they are
reported (at completion). A tenant that becomes backlogged again has its counter lifted to
the smallest counter among backlogged tenants (or, with none, to the counter of the last
tenant served), so idle time cannot be banked as credit.

Bound used by the tests (our cost model, equal weights, two continuously backlogged
tenants f and g; L_in = largest prompt, L_out = largest output, S = most requests of one
tenant that can be in flight at once). When f was last dispatched, c_f <= c_g; afterwards
c_f grows by at most that request's input plus the output of its <= S in-flight requests,
while c_g never decreases. Hence at any time ``|c_f - c_g| <= D = L_in + S * L_out`` and
the service difference over any interval in which both stay backlogged is at most ``2 D``
(the paper's ``2 (w_p L_input + w_q M)`` with w_p = w_q = 1 and M = S * L_out).

All functions are pure: they return a new :class:`VtcState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping


@dataclass(frozen=True)
class VtcState:
    """Counters of one priority class. ``last_served`` is the counter of the tenant served last."""

    counters: Mapping[str, float] = field(default_factory=dict)
    last_served: float = 0.0

    def counter(self, tenant_id: str) -> float:
        return self.counters.get(tenant_id, 0.0)


def on_arrival(state: VtcState, tenant_id: str, backlogged: Iterable[str]) -> VtcState:
    """A request of ``tenant_id`` arrived; ``backlogged`` are tenants with queued requests *before* it."""
    backlogged = set(backlogged)
    if tenant_id in backlogged:
        return state  # already backlogged: no lift
    floor = min((state.counter(t) for t in backlogged), default=state.last_served)
    current = state.counter(tenant_id)
    if current >= floor:
        return state
    return VtcState({**state.counters, tenant_id: floor}, state.last_served)


def pick(state: VtcState, backlogged: Iterable[str]) -> str:
    """The backlogged tenant with the smallest counter (ties: tenant id, for determinism)."""
    candidates = sorted(set(backlogged))
    if not candidates:
        raise ValueError("pick() needs at least one backlogged tenant")
    return min(candidates, key=lambda t: (state.counter(t), t))


def charge(state: VtcState, tenant_id: str, tokens: int, weight: float, served: bool = False) -> VtcState:
    """Add ``tokens / weight`` to the tenant's counter; ``served`` marks a dispatch."""
    value = state.counter(tenant_id) + max(0, tokens) / weight
    return VtcState({**state.counters, tenant_id: value}, value if served else state.last_served)


def forget(state: VtcState, keep: Iterable[str]) -> VtcState:
    """Drop counters of tenants not in ``keep`` (bounded memory for many short-lived tenants)."""
    keep = set(keep)
    return VtcState({t: c for t, c in state.counters.items() if t in keep}, state.last_served)
