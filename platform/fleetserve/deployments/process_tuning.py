"""Per-process tuning of the serving processes (ingress and replica actors).

``freeze_startup_heap``: after a deployment has built itself, collect once and move every
surviving object into CPython's permanent generation (``gc.freeze``), as vLLM's servers do.
The startup heap (Ray, Serve, torch, pydantic, the model's modules: over 100k tracked
objects) is then never scanned again, so a full collection under load walks only what the
serving path allocated since: measured on the ingress under the overload bench (proxy, per-step
streams), the largest pause fell from 43 ms to 22 ms (young collections of 4-17 ms every 1-2 s
are unchanged). It does not bound pauses caused by the serving heap itself: with paced streams
and direct ingress at 24 req/s offered, the hundreds of queued requests made full collections
of 111-186 ms (docs/benchmarks.md, "GC"). Objects frozen here are never collected; only
startup objects are affected.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect, then freeze what survives. Returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
