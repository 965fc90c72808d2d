"""Synthetic requests for a rollout's warm-up and health check, straight to one version's replicas.

They take the stream stage only (router + model client): no tenant, no quota, no admission
slot and no metrics, so they never count in the guardrails' windows or anyone's usage.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Optional

from fleetserve.canary.serving import VersionTable, route_key
from fleetserve.deployments.model_client import ModelClient
from fleetserve.engine.protocol import FINISH_ERROR, GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.router.chooser import RouteChooser

PROBE_PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]  # token ids every vocabulary has
PROBE_TOKENS = 4


class ServiceProber:
    """``probe(model, version)``: None when a short greedy request completed, else why not."""

    def __init__(self, client: ModelClient, router: RouteChooser, versions: VersionTable, timeout_s: float = 60.0):
        self._client, self._router, self._versions, self._timeout_s = client, router, versions, timeout_s

    async def probe(self, model: str, version: str) -> Optional[str]:
        try:
            return await asyncio.wait_for(self._once(model, version), self._timeout_s)
        except asyncio.TimeoutError:
            return f"no answer within {self._timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - any failure is the probe's answer
            return f"{type(exc).__name__}: {exc}"

    async def _once(self, model: str, version: str) -> Optional[str]:
        key = route_key(model, version, self._versions.stable_version(model))
        self._router.check(key)
        route = self._router.choose(key, None)
        request = GenerateRequest(request_id=f"probe-{uuid.uuid4().hex}", prompt_token_ids=list(PROBE_PROMPT),
                                  params=SamplingParams(max_tokens=PROBE_TOKENS, temperature=0.0, ignore_eos=True))
        async for out in self._client.generate(request, route):
            if out.finish_reason == FINISH_ERROR:
                return out.error or "engine error"
            if out.finished:
                return None
        return "the stream ended before the request finished"
