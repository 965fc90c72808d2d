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

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the test extra installs schemathesis (pyproject.toml)")

from tests.api.openapi_fuzz import fuzz_schema  # noqa: E402
from tests.api.rest_harness import ADMIN, AUTH, MODEL, ScriptedClient, make_rest  # noqa: E402
from tests.api.test_truncation import COMPLETE  # noqa: E402

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FLEETSERVE_FUZZ_EXAMPLES", "80"))


def test_no_input_gets_a_5xx(tiny_llama_path, capsys):
    rest = make_rest(ScriptedClient(COMPLETE), tiny_llama_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", rest.app)
    tally = fuzz_schema(schema, EXAMPLES, admin_headers=ADMIN, tenant_headers=AUTH, tenant_id="acme", model=MODEL)
    statuses = tally.totals()
    with capsys.disabled():
        print(f"\nschemathesis: {tally.cases()} cases over {len(tally.statuses)} operations, "
              f"statuses {dict(sorted(statuses.items()))}, {len(tally.server_errors)} responses >= 500")
    assert len(tally.statuses) >= 13 and tally.cases() >= len(tally.statuses) * 2
    assert any(s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)  # both sides were reached
    assert tally.server_errors == []
