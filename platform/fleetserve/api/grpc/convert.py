"""Proto messages <-> the REST API's shapes, so gRPC runs the REST path and nothing else.

A :class:`GenerateRequest` becomes the JSON body a REST client would send (``prompt`` ->
``/v1/completions``, ``messages`` -> ``/v1/chat/completions``); the pydantic models, the
tree check and ``openai_format``'s job builders then validate and plan it exactly as they
do a REST body, so bounds, defaults and error messages (and ``param``, which names the REST
field) are the same. Outputs go back through the same :class:`ToolCallDecoder` the REST
responses use, so a choice's text, tool calls and finish reason match REST's.

JSON-valued fields (schemas, tool parameters) travel as JSON text: protobuf's ``Struct``
turns every number into a double, which a schema's ``const``/``enum`` would notice.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from fleetserve.api.grpc import inference_pb2 as pb
from fleetserve.api.job import Job
from fleetserve.api.service import ChoiceEvent
from fleetserve.api.tool_calls import ToolCallDecoder, ToolCallEvent, assemble
from fleetserve.api.tool_calls import finish_reason as tool_finish
from fleetserve.engine.protocol import TokenLogprob
from fleetserve.errors import InvalidRequestError

_OPTIONAL_FIELDS = ("max_tokens", "n", "seed", "top_k", "user", "parallel_tool_calls")
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")

LogprobsFn = Callable[[list[TokenLogprob]], list[pb.TokenLogprob]]


def request_body(req: pb.GenerateRequest) -> tuple[str, dict]:
    """("chat" | "completion", the equivalent REST body). Raises 400s for what only the
    proto can get wrong (both or neither of prompt and messages, JSON text that is not JSON)."""
    if req.prompt and len(req.messages):
        raise InvalidRequestError("set exactly one of prompt and messages", field="prompt")
    data: dict = {"model": req.model, "ignore_eos": req.ignore_eos}
    if len(req.messages):
        kind = "chat"
        data["messages"] = [_message(m) for m in req.messages]
    elif req.prompt:
        kind = "completion"
        data["prompt"] = req.prompt
    else:
        raise InvalidRequestError("prompt or messages is required", field="prompt")
    _scalars(req, data)
    _max_tokens(req, kind, data)
    if req.HasField("logprobs"):
        if kind == "chat":
            data.update(logprobs=True, top_logprobs=req.logprobs)
        else:
            data["logprobs"] = req.logprobs
    if req.echo:
        data["echo"] = True  # chat has no echo: the chat model ignores it, as REST does
    _structured(req, data)
    _tools(req, data)
    return kind, data


def _scalars(req: pb.GenerateRequest, data: dict) -> None:
    for f in _OPTIONAL_FIELDS:
        if req.HasField(f):
            data[f] = getattr(req, f)
    for f in _FLOAT_FIELDS:
        if req.HasField(f):
            data[f] = round(getattr(req, f), 6)  # float32 on the wire
    if len(req.stop):
        data["stop"] = list(req.stop)
    if len(req.stop_token_ids):
        data["stop_token_ids"] = list(req.stop_token_ids)
    if len(req.logit_bias):
        data["logit_bias"] = {str(k): round(v, 6) for k, v in req.logit_bias.items()}
    if req.include_stop_str_in_output:
        data["include_stop_str_in_output"] = True


def _max_tokens(req: pb.GenerateRequest, kind: str, data: dict) -> None:
    if not req.HasField("max_completion_tokens"):
        return
    if kind == "chat":
        data["max_completion_tokens"] = req.max_completion_tokens
    elif req.HasField("max_tokens") and req.max_tokens != req.max_completion_tokens:
        raise InvalidRequestError("give one of max_tokens and max_completion_tokens", field="max_completion_tokens")
    else:
        data["max_tokens"] = req.max_completion_tokens


def _message(m: pb.ChatMessage) -> dict:
    # Unset content is "" (as before these fields existed), except in an assistant turn
    # with tool calls, where it is OpenAI's null.
    out: dict = {"role": m.role, "content": m.content if m.HasField("content") or not len(m.tool_calls) else None}
    if len(m.tool_calls):
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
    if m.HasField("tool_call_id"):
        out["tool_call_id"] = m.tool_call_id
    if m.HasField("name"):
        out["name"] = m.name
    return out


def _structured(req: pb.GenerateRequest, data: dict) -> None:
    if req.HasField("response_format"):
        rf = req.response_format
        out: dict = {"type": rf.type}
        if rf.HasField("json_schema"):
            js = rf.json_schema
            out["json_schema"] = {"name": js.name or "response",
                                  "schema": _json_text(js.schema_json, "response_format.json_schema.schema")}
            if js.HasField("strict"):
                out["json_schema"]["strict"] = js.strict
            if js.HasField("description"):
                out["json_schema"]["description"] = js.description
        data["response_format"] = out
    if req.HasField("structured_outputs"):
        so = req.structured_outputs
        out = {k: getattr(so, k) for k in ("regex", "grammar", "json_object") if so.HasField(k)}
        if so.HasField("json"):
            out["json"] = _json_text(so.json, "structured_outputs.json")
        if len(so.choice):
            out["choice"] = list(so.choice)
        data["structured_outputs"] = out


def _tools(req: pb.GenerateRequest, data: dict) -> None:
    if len(req.tools):
        data["tools"] = [{"type": "function", "function": _function(t, i)} for i, t in enumerate(req.tools)]
    if req.HasField("tool_choice"):
        which = req.tool_choice.WhichOneof("choice")
        if which == "function":
            data["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.function}}
        elif which == "mode":
            data["tool_choice"] = req.tool_choice.mode


def _function(t: pb.Tool, index: int) -> dict:
    out: dict = {"name": t.name}
    if t.HasField("description"):
        out["description"] = t.description
    if t.HasField("parameters_json"):
        out["parameters"] = _json_text(t.parameters_json, f"tools.{index}.function.parameters")
    if t.HasField("strict"):
        out["strict"] = t.strict
    return out


def _json_text(text: str, field: str):
    """JSON text of a field; not JSON (or nested past the parser's limit) is a 400 naming it.
    The depth and text bounds are the REST body's (``check_tree`` runs on the whole body)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidRequestError(f"{field}: JSON nested too deep", field=field) from None
    except ValueError as exc:
        raise InvalidRequestError(f"{field}: not valid JSON text ({exc.msg})", field=field) from None


# ----- outputs ----------------------------------------------------------------------------


def _echo(job: Job, index: int) -> str:
    return job.echo[index // job.n] if job.echo else ""


def _calls(events: list[ToolCallEvent]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=e.id or "", name=e.name or "", arguments=e.arguments) for e in events]


def unary_choice(job: Job, index: int, text: str, finish: Optional[str], logprobs: list[pb.TokenLogprob]) -> pb.Choice:
    """One choice of a unary response: REST's text, tool calls and finish reason."""
    text = _echo(job, index) + text
    if job.tool_plan is None:
        return pb.Choice(index=index, text=text, finish_reason=finish or "", logprobs=logprobs)
    decoder = ToolCallDecoder(job.tool_plan)
    content, calls = assemble(decoder.feed(text) + decoder.finish())
    return pb.Choice(index=index, text=content or "", finish_reason=tool_finish(finish, len(calls)) or "",
                     logprobs=logprobs, tool_calls=_calls(calls))


class ChunkWriter:
    """Stream messages per choice event, as REST's chunkers cut them: echo first, tool-call
    deltas through one decoder per choice, the finish reason on the choice's last message."""

    def __init__(self, job: Job, logprobs: LogprobsFn):
        self.job, self._logprobs = job, logprobs
        self._echo_pending = set(range(job.num_choices)) if job.echo else set()
        plan = job.tool_plan
        self._decoders = [ToolCallDecoder(plan) for _ in range(job.num_choices)] if plan is not None else None

    def _chunk(self, index: int, **kw) -> pb.GenerateChunk:
        return pb.GenerateChunk(id=self.job.request_id, index=index, **kw)

    def chunks(self, ev: ChoiceEvent) -> list[pb.GenerateChunk]:
        out, i = ev.output, ev.index
        text = out.text_delta
        if i in self._echo_pending:
            self._echo_pending.discard(i)
            text = _echo(self.job, i) + text
        lps = self._logprobs(out.logprobs_delta or [])
        finish = (out.finish_reason or "") if out.finished else ""
        if self._decoders is None:
            return [self._chunk(i, text=text, finish_reason=finish, logprobs=lps)] if text or out.finished or lps else []
        decoder = self._decoders[i]
        chunks = []
        for e in decoder.feed(text) + (decoder.finish() if out.finished else []):
            if isinstance(e, str):
                chunks.append(self._chunk(i, text=e))
            else:
                chunks.append(self._chunk(i, tool_calls=[pb.ToolCallDelta(index=e.index, id=e.id or "",
                                                                          name=e.name or "", arguments=e.arguments)]))
        if lps:
            chunks.append(self._chunk(i, logprobs=lps))
        if out.finished:
            chunks.append(self._chunk(i, finish_reason=tool_finish(out.finish_reason, decoder.calls) or ""))
        return chunks
