"""Schemathesis over fleetserve's served spec: the pieces the CI-sized test
(tests/api/test_fuzz_openapi.py) and the long run (bench/bench_fuzz.py) share.

``fuzz_schema(schema, examples, ...)`` runs every operation in positive and negative mode
(derandomized, so a run is reproducible) and returns a :class:`FuzzTally`: statuses per
operation and a curl reproduction of every response >= 500 (or exception raised past the
app's handlers, which a real server answers with a 500).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# Token counts a fuzzed body may ask for: a case stays cheap on a real engine (0 and negative
# values are kept, so the range checks are still reached).
MAX_TOKENS_CAP = 8
MAX_N_CAP = 2


@dataclass
class FuzzTally:
    """What a run saw: statuses per operation ("POST /v1/completions") and reproductions."""

    statuses: dict[str, Counter] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)

    def record(self, op_name: str, status: int) -> None:
        self.statuses.setdefault(op_name, Counter())[status] += 1

    def totals(self) -> Counter:
        out: Counter = Counter()
        for c in self.statuses.values():
            out.update(c)
        return out

    def cases(self) -> int:
        return sum(self.totals().values())

    def at_least_500(self) -> int:
        return sum(n for s, n in self.totals().items() if s >= 500)


def op_name(op) -> str:
    return f"{op.method.upper()} {op.path}"


# Routes that take the admin key (the rest take a tenant key, or none).
ADMIN_PREFIXES = ("/admin", "/adapters", "/metrics")


def is_admin(op) -> bool:
    return op.path.startswith(ADMIN_PREFIXES)


def fixed_parameters(op, admin_headers: dict, tenant_headers: dict, tenant_id: str) -> dict:
    """Keys per route; PATCH goes to an existing tenant so its body validation is reached."""
    fixed = {"headers": admin_headers if is_admin(op) else tenant_headers}
    if op.method.upper() == "PATCH":
        fixed["path_parameters"] = {"tenant_id": tenant_id}
    return fixed


def served_model(model: str, cap_tokens: bool = False) -> Callable:
    """A body whose ``model`` is any string names the served model: random names would stop
    every case at the 404 and never reach tokenization, context checks or the stream. With
    ``cap_tokens`` (a real engine behind the server) integer token counts and ``n`` are capped,
    so a case costs a few engine steps at most; without, huge values still reach the context
    length checks."""

    def fix(case):
        body = case.body
        if isinstance(body, dict):
            if isinstance(body.get("model"), str):
                body["model"] = model
            for key, cap in (("max_tokens", MAX_TOKENS_CAP), ("max_completion_tokens", MAX_TOKENS_CAP),
                             ("n", MAX_N_CAP), ("best_of", MAX_N_CAP)):
                value = body.get(key)
                if cap_tokens and isinstance(value, int) and not isinstance(value, bool) and value > cap:
                    body[key] = cap
        return case

    return fix


def ordered_operations(schema) -> list:
    """Every operation, tenant-key routes first: the admin routes may then delete or re-key
    the tenant."""
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=is_admin)
    return operations


def fuzz_operation(op, mode, examples: int, tally: FuzzTally, fixed: dict, fix_case: Callable,
                   call_kwargs: Optional[dict] = None) -> None:
    name = op_name(op)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode, **fixed).map(fix_case))
    def run(case) -> None:
        try:
            response = case.call(**(call_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - raised past the app's handlers: a 500 on a real server
            tally.record(name, 500)
            tally.server_errors.append(f"{name} ({mode.value}): raised {exc!r} <- {case.as_curl_command()[:400]}")
            return
        tally.record(name, response.status_code)
        if response.status_code >= 500:
            tally.server_errors.append(f"{name} ({mode.value}): {response.status_code} "
                                       f"{response.text[:200]!r} <- {case.as_curl_command()[:400]}")

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body (GET /health) has nothing to violate.
        assert mode == schemathesis.GenerationMode.NEGATIVE, f"no positive case for {name}"


def fuzz_schema(schema, examples: int, *, admin_headers: dict, tenant_headers: dict, tenant_id: str, model: str,
                cap_tokens: bool = False, call_kwargs: Optional[dict] = None, progress: Optional[Callable[[str, FuzzTally], None]] = None) -> FuzzTally:
    """Fuzz every operation of ``schema`` in both modes, ``examples`` each; ``progress`` is
    called after each (operation, mode) with its name."""
    tally = FuzzTally()
    fix = served_model(model, cap_tokens)
    for op in ordered_operations(schema):
        fixed = fixed_parameters(op, admin_headers, tenant_headers, tenant_id)
        for mode in MODES:
            fuzz_operation(op, mode, examples, tally, fixed, fix, call_kwargs)
            if progress is not None:
                progress(f"{op_name(op)} ({mode.value})", tally)
    return tally
