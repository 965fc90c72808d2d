"""The fast SSE chunk writers produce exactly what the pydantic models would."""

import pytest

from fleetserve.api import openai_models as M
from fleetserve.api.openai_format import ChatChunker, CompletionChunker
from fleetserve.api.service import ChoiceEvent, Job, ModelSpec, ServedModel
from fleetserve.engine.protocol import ModelInfo, RequestOutput
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.tenants.context import TenantContext

TEXTS = ["plain", 'quote " back\\slash', "line\nbreak\ttab\x01ctl\x7f", "ünïcødé ✓ \u2028 😀", ""]


def make_job(**overrides) -> Job:
    info = ModelInfo(name="m", max_model_len=64, vocab_size=100, eos_token_ids=[0], has_chat_template=True)
    kwargs = dict(request_id="abc123", model=ServedModel(ModelSpec("tiny \"m\"", "/x"), info, None, 1700000000),
                  ctx=TenantContext("t", "premium", 0, 1.0, None), prompts=[[1, 2]], params=SamplingParams(max_tokens=4),
                  n=2, arrival=0.0, created=1700000001)
    kwargs.update(overrides)
    return Job(**kwargs)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("finished", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_completion_chunk_matches_pydantic(include_usage, finished, text):
    job = make_job()
    out = RequestOutput("r", text, [5], finished=finished, finish_reason="length" if finished else None)
    got = CompletionChunker(job, False, include_usage).chunk(ChoiceEvent(1, out))
    if not text and not finished:
        assert got is None
        return
    want = M.CompletionResponse(id="cmpl-abc123", created=job.created, model=job.model.spec.name,
                                choices=[M.CompletionChoice(index=1, text=text, finish_reason="length" if finished else None)])
    assert got == want.model_dump_json(exclude_none=not include_usage)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("finished", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_chat_chunks_match_pydantic(include_usage, finished, text):
    job = make_job()
    out = RequestOutput("r", text, [5], finished=finished, finish_reason="stop" if finished else None)
    got = ChatChunker(job, False, include_usage).chunk(ChoiceEvent(0, out))

    def ref(delta, finish=None):
        c = M.ChatCompletionChunk(id="chatcmpl-abc123", created=job.created, model=job.model.spec.name,
                                  choices=[M.ChatChunkChoice(index=0, delta=delta, finish_reason=finish)])
        return c.model_dump_json(exclude_none=False) if include_usage else c.model_dump_json(exclude={"usage"})

    want = [ref(M.ChatDelta(role="assistant", content=""))]
    if text or finished:
        want.append(ref(M.ChatDelta(content=text) if text else M.ChatDelta(), "stop" if finished else None))
    assert got == want
