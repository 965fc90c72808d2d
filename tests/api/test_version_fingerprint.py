"""Once stage 3 has chosen a version, every response and chunk names it in system_fingerprint."""

import json

import pytest

from fleetserve.api import openai_models as M
from fleetserve.api.openai_format import ChatChunker, CompletionChunker, chat_response, completion_response
from fleetserve.api.service import ChoiceEvent
from fleetserve.engine.protocol import RequestOutput
from tests.api.test_chunk_format import make_job

FP = 'tiny "m"@v2'


@pytest.mark.parametrize("include_usage", [False, True])
def test_fast_chunks_match_pydantic_with_a_fingerprint(include_usage):
    job = make_job(version="v2")
    assert job.fingerprint == FP
    out = RequestOutput("r", "hi", [5], finished=True, finish_reason="length")
    got = CompletionChunker(job, False, include_usage).chunk(ChoiceEvent(1, out))
    want = M.CompletionResponse(id="cmpl-abc123", created=job.created, model=job.model.spec.name,
                                choices=[M.CompletionChoice(index=1, text="hi", finish_reason="length")],
                                system_fingerprint=FP)
    assert got == want.model_dump_json(exclude_none=not include_usage)
    chat = ChatChunker(job, False, include_usage)
    for chunk in chat.chunk(ChoiceEvent(0, out)):
        assert json.loads(chunk)["system_fingerprint"] == FP
    if include_usage:
        assert json.loads(chat.usage_chunk())["system_fingerprint"] == FP


def test_unary_responses_carry_the_fingerprint_and_the_alias():
    job = make_job(version="v2")
    for make in (completion_response, chat_response):
        r = make(job, [], False)
        assert r.system_fingerprint == FP and r.model == job.model.spec.name
