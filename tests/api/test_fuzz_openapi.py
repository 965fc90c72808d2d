"""Schemathesis over the served spec (issue 25, item 4): no response >= 500, for any input.

Every operation of ``/openapi.json`` is fuzzed in-process (schemathesis's ASGI transport)
with schema-conforming and schema-violating cases: the inference routes with a tenant key
over an in-process :class:`InferenceService` (real tokenizer of the tiny checkpoint, a
scripted stream stage), the admin routes with the admin key against a throwaway in-memory
registry. The examples per operation and mode are bounded (``FLEETSERVE_FUZZ_EXAMPLES``,
default 80: about 1,100 cases in under a minute on two cores), derandomized so a run is reproducible; the number
of cases run is printed.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the test extra installs schemathesis (pyproject.toml)")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from tests.api.rest_harness import ADMIN, AUTH, MODEL, ScriptedClient, make_rest  # noqa: E402
from tests.api.test_truncation import COMPLETE  # noqa: E402

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FLEETSERVE_FUZZ_EXAMPLES", "80"))
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def _fixed(op) -> dict:
    """Keys per route; PATCH goes to an existing tenant so its body validation is reached."""
    fixed = {"headers": ADMIN if op.path.startswith("/admin") else AUTH}
    if op.method.upper() == "PATCH":
        fixed["path_parameters"] = {"tenant_id": "acme"}
    return fixed


def _served_model(case):
    """A body whose ``model`` is any string names the served model: random names would stop
    every case at the 404 and never reach tokenization, context checks or the stream."""
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = MODEL
    return case


def _fuzz_operation(op, mode, statuses: Counter, server_errors: list) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode, **_fixed(op)).map(_served_model))
    def run(case) -> None:
        try:
            response = case.call()
        except Exception as exc:  # noqa: BLE001 - raised past the app's handlers: a 500 on a real server
            statuses[500] += 1
            server_errors.append(f"{op.method.upper()} {op.path} ({mode}): raised {exc!r} <- "
                                 f"{case.as_curl_command()[:400]}")
            return
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(f"{op.method.upper()} {op.path} ({mode}): {response.status_code} "
                                 f"{response.text[:200]!r} <- {case.as_curl_command()[:400]}")

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body (GET /health) has nothing to violate.
        assert mode == schemathesis.GenerationMode.NEGATIVE, f"no positive case for {op.method} {op.path}"


def test_no_input_gets_a_5xx(tiny_llama_path, capsys):
    rest = make_rest(ScriptedClient(COMPLETE), tiny_llama_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", rest.app)
    statuses: Counter = Counter()
    server_errors: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    # Tenant-key routes first: the admin routes may then delete or re-key the tenant.
    operations.sort(key=lambda op: op.path.startswith("/admin"))
    for op in operations:
        for mode in MODES:
            _fuzz_operation(op, mode, statuses, server_errors)
    with capsys.disabled():
        print(f"\nschemathesis: {sum(statuses.values())} cases over {len(operations)} operations, "
              f"statuses {dict(sorted(statuses.items()))}, {len(server_errors)} responses >= 500")
    assert len(operations) >= 13 and sum(statuses.values()) >= len(operations) * 2
    assert any(s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)  # both sides were reached
    assert server_errors == []
