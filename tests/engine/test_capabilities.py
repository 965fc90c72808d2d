"""Capabilities are declared, never probed: every engine returns EngineCapabilities, the
replica's pacing follows them, and runners declare supports_between_layers / eos_token_ids."""

from __future__ import annotations

import asyncio

import pytest

from fleetserve.engine.process.async_engine import AsyncEngine
from fleetserve.engine.process.pacing import paced_generate
from fleetserve.engine.process.process_engine import ProcessEngine
from fleetserve.engine.protocol import EngineCapabilities, RequestOutput
from fleetserve.engine.vllm.backend import VllmEngine
from tests.engine.factories import make_config, make_engine, make_generate_request, make_runner


def test_native_engines_declare_pacing_preempt_and_sleep():
    native = EngineCapabilities(paces_streams=True, supports_preempt=True, supports_sleep=True)
    assert AsyncEngine(make_config()).capabilities() == native
    assert ProcessEngine(make_config()).capabilities() == native


@pytest.mark.parametrize("engine_args, sleep", [({}, False), ({"enable_sleep_mode": True}, True)])
def test_vllm_declares_what_it_cannot_do(engine_args, sleep):
    caps = VllmEngine("/models/x", engine_args=engine_args).capabilities()  # never imports vLLM
    assert caps == EngineCapabilities(paces_streams=False, supports_preempt=False, supports_sleep=sleep)


class PerStep:
    """An engine that streams one output per step and declares whether it paces."""

    def __init__(self, paces: bool):
        self._caps = EngineCapabilities(paces_streams=paces)

    def capabilities(self) -> EngineCapabilities:
        return self._caps

    async def generate(self, request):
        for i in range(5):
            await asyncio.sleep(0)
            yield RequestOutput(request.request_id, token_ids_delta=[i], finished=i == 4)


@pytest.mark.parametrize("paces", [True, False])
async def test_the_replica_paces_only_engines_that_do_not(paces):
    request = make_generate_request(stream_interval_s=30.0)
    outs = [o async for o in paced_generate(PerStep(paces), request)]
    assert [t for o in outs for t in o.token_ids_delta] == [0, 1, 2, 3, 4]
    # Trusted to pace itself: passed through as made. Paced here: first, then the final.
    assert len(outs) == (5 if paces else 2)


@pytest.mark.parametrize("layered", [False, True])
def test_runner_capabilities_are_read_from_the_runner_protocol(layered):
    engine = make_engine(runner=make_runner(block_size=4, layered=layered, eos_token_ids=[7]),
                         interleave_priority_prefill=True)
    assert engine.supports_side_steps is layered
    assert engine.eos_token_ids == [7]
    assert make_engine(runner=make_runner(block_size=4)).eos_token_ids == []  # no tokenizer either
