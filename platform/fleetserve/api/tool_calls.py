"""Tool calls on /v1/chat/completions: what ``tool_choice`` asks of the engine, and how the
generated text becomes OpenAI ``tool_calls``.

=========  =================================================  ===============================
choice     constraint (constrained decoding, xgrammar)         the text is read as
=========  =================================================  ===============================
none       none                                                content
auto       none                                                the model's parser (``hermes``:
                                                               ``<tool_call>{json}</tool_call>``)
named      the function's ``parameters`` schema                that function's arguments
required   a JSON array of 1+ ``{"name", "arguments"}``        the calls in the array
           objects, one schema per tool (``maxItems`` 1 when
           ``parallel_tool_calls`` is false)
=========  =================================================  ===============================

One :class:`ToolCallDecoder` per choice turns the text, fed in deltas, into events
(content text, or a tool call's name / argument text); the unary response collects the
same events the stream sends, so streamed deltas concatenate to the unary result.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Optional, Union

from fleetserve.api.openai_tools import NamedToolChoice, Tool, ToolsFields
from fleetserve.engine.sampling_params import StructuredOutput
from fleetserve.errors import InvalidRequestError

TOOL_CALL_PARSERS = ("hermes",)  # per model: ModelSpec.tool_call_parser
ANY_OBJECT = {"type": "object"}
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolPlan:
    """How one chat request's output is read: ``mode`` is none, auto, named or required."""

    mode: str
    names: tuple[str, ...]
    parser: Optional[str] = None  # auto only
    function: Optional[str] = None  # named only

    @property
    def reads_calls(self) -> bool:
        return self.mode != "none"


def plan_tools(req: ToolsFields, parser: Optional[str]) -> tuple[Optional[ToolPlan], Optional[StructuredOutput]]:
    """(the plan, the constraint) for a request; (None, None) when it has no tools."""
    tools = req.tools or []
    if not tools:
        if isinstance(req.tool_choice, NamedToolChoice) or req.tool_choice == "required":
            raise InvalidRequestError("tool_choice needs tools", field="tool_choice")
        return None, None
    names = tuple(t.function.name for t in tools)
    choice = req.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == choice.function.name)
        return ToolPlan("named", names, function=tool.function.name), _schema(_parameters(tool))
    if choice == "required":
        return ToolPlan("required", names), _schema(_calls_array(tools, one=req.parallel_tool_calls is False))
    if choice == "auto" and parser is None:
        return ToolPlan("none", names), None  # no parser configured: the text stays content
    return ToolPlan(choice, names, parser=parser if choice == "auto" else None), None


def _schema(schema: dict) -> StructuredOutput:
    try:
        return StructuredOutput.json_schema(schema)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, field="tools") from None


def _parameters(tool: Tool) -> dict:
    return tool.function.parameters or ANY_OBJECT


def _calls_array(tools: list[Tool], one: bool) -> dict:
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if one:
        schema["maxItems"] = 1
    return schema


# ----- decoding the text -------------------------------------------------------------------


@dataclass
class ToolCallEvent:
    """A tool call's first event carries ``id`` and ``name``; later ones more ``arguments``."""

    index: int
    id: Optional[str] = None
    name: Optional[str] = None
    arguments: str = ""


Event = Union[str, ToolCallEvent]  # a str is content text


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCallDecoder:
    """Text deltas in, events out, for one choice of one request."""

    plan: ToolPlan
    calls: int = 0
    _buffer: str = ""
    _in_call: bool = False
    _sent_named: bool = False
    _pending: list = field(default_factory=list)

    def feed(self, text: str) -> list[Event]:
        if not text:
            return []
        if self.plan.mode == "named":
            return self._named(text)
        if self.plan.mode == "required":
            self._buffer += text  # one JSON array: read whole at the end
            return []
        if self.plan.mode == "auto":
            self._buffer += text
            return self._hermes(final=False)
        return [text]

    def finish(self) -> list[Event]:
        if self.plan.mode == "named" and not self._sent_named:
            return self._named("")
        if self.plan.mode == "required":
            return self._required()
        if self.plan.mode == "auto":
            return self._hermes(final=True)
        return []

    # ----- modes ------------------------------------------------------------------------

    def _named(self, text: str) -> list[Event]:
        if not self._sent_named:
            self._sent_named, self.calls = True, 1
            return [ToolCallEvent(0, new_call_id(), self.plan.function, text)]
        return [ToolCallEvent(0, arguments=text)]

    def _required(self) -> list[Event]:
        text, self._buffer = self._buffer, ""
        try:
            parsed = json.loads(text)
            if not isinstance(parsed, list) or not parsed:
                raise TypeError("not a list of calls")
            items = [(item["name"], item["arguments"]) for item in parsed]
        except (ValueError, KeyError, TypeError):
            return [text] if text else []  # cut short (length): what there is, as content
        return [self._call(name, args) for name, args in items]

    def _call(self, name: str, arguments) -> ToolCallEvent:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        event = ToolCallEvent(self.calls, new_call_id(), name, args)
        self.calls += 1
        return event

    def _hermes(self, final: bool) -> list[Event]:
        """Content up to ``<tool_call>``; each complete ``<tool_call>{json}</tool_call>``
        block a call. Text that may be the start of a tag is held back until it is not."""
        out: list[Event] = []
        while self._buffer:
            if self._in_call:
                end = self._buffer.find(HERMES_CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(HERMES_CLOSE):]
                self._in_call = False
                out.append(self._hermes_call(body))
                continue
            start = self._buffer.find(HERMES_OPEN)
            if start < 0:
                keep = 0 if final else _partial_suffix(self._buffer, HERMES_OPEN)
                text, self._buffer = self._buffer[:len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
                if text:
                    out.append(text)
                break
            if start:
                out.append(self._buffer[:start])
            self._buffer, self._in_call = self._buffer[start + len(HERMES_OPEN):], True
        if final and self._buffer:  # an unclosed call: the text as it was written
            out.append((HERMES_OPEN if self._in_call else "") + self._buffer)
            self._buffer, self._in_call = "", False
        return out

    def _hermes_call(self, body: str) -> Event:
        try:
            obj = json.loads(body)
            name, args = obj["name"], obj.get("arguments", obj.get("parameters", {}))
            if not isinstance(name, str):
                raise TypeError(name)
        except (ValueError, KeyError, TypeError, AttributeError):
            return HERMES_OPEN + body + HERMES_CLOSE  # not a call after all: keep it as content
        return self._call(name, args)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def finish_reason(reason: Optional[str], calls: int) -> Optional[str]:
    """``tool_calls`` when a choice that stopped on its own made calls (OpenAI)."""
    return "tool_calls" if calls and reason == "stop" else reason


def assemble(events: list[Event]) -> tuple[Optional[str], list[ToolCallEvent]]:
    """(content, one whole event per call) from a choice's events: what the stream sent, summed."""
    content = "".join(e for e in events if isinstance(e, str))
    calls: dict[int, ToolCallEvent] = {}
    for e in events:
        if isinstance(e, ToolCallEvent):
            if e.index not in calls:
                calls[e.index] = ToolCallEvent(e.index, e.id, e.name, "")
            calls[e.index].arguments += e.arguments
    return (content or None) if calls else content, [calls[i] for i in sorted(calls)]
