"""Property-based fuzz of the engine pipe's frame decoder (issue 25, item 4): random bytes
and mutated valid frames either decode to one of the pipe's messages or raise FrameError,
never another exception (the pipe's reader then ends the pipe, tests/engine/process/test_messages.py).
Derandomized and bounded (``FLEETSERVE_FUZZ_EXAMPLES``, default 80)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.process import messages as m
from tests.fixtures.fuzz import mutated
from tests.engine.process.test_messages import EXAMPLES

pytestmark = pytest.mark.fuzz

FRAMES = [m.encode(msg) for msg in EXAMPLES]
TYPES = tuple(m._CODEC.message_types)


@settings(max_examples=2 * int(os.environ.get("FLEETSERVE_FUZZ_EXAMPLES", "80")), deadline=None, database=None,
          derandomize=True)
@given(frame=st.one_of(st.binary(max_size=256), mutated(FRAMES)))
def test_pipe_decoder_refuses_garbage_with_frame_error_only(frame):
    try:
        msg = m.decode(frame)
    except m.FrameError:
        return
    assert type(msg) in TYPES
