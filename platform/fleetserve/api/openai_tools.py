"""OpenAI tool-call wire shapes: ``tools`` and ``tool_choice`` in requests, assistant
messages carrying ``tool_calls``, and ``tool_calls`` in responses and streamed deltas."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetserve.errors import InvalidRequestError

MAX_TOOLS = 128  # OpenAI's bound
MAX_TOOL_CALLS = 64
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionDefinition(_In):
    name: str = Field(pattern=NAME_PATTERN, description="Function name: letters, digits, _ . : -, at most 64.")
    description: Optional[str] = Field(None, max_length=16_384, description="What the function does (to the template).")
    parameters: Optional[dict[str, Any]] = Field(None, description="JSON Schema of the arguments object.")
    strict: Optional[bool] = Field(None, description="Accepted; named and required calls are always enforced.")


class Tool(_In):
    type: Literal["function"] = Field(description="Only function tools.")
    function: FunctionDefinition = Field(description="The function.")


class NamedFunction(_In):
    name: str = Field(max_length=64, description="A function from tools.")


class NamedToolChoice(_In):
    type: Literal["function"] = Field(description="Force this function.")
    function: NamedFunction = Field(description="The function to call.")


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class ToolsFields(BaseModel):
    """The tool fields of a chat request."""

    tools: Optional[list[Tool]] = Field(None, max_length=MAX_TOOLS, description="Functions the model may call.")
    tool_choice: Optional[ToolChoice] = Field(
        None, description="none, auto (default with tools), required, or a named function; required and named are "
                          "enforced by constrained decoding.")
    parallel_tool_calls: Optional[bool] = Field(None, description="With required: false allows exactly one call.")

    @model_validator(mode="after")
    def _tool_choice(self):
        choice = self.tool_choice
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise InvalidRequestError("tools: function names must be unique", field="tools")
        if choice in ("required",) and not names:
            raise InvalidRequestError("tool_choice required needs tools", field="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequestError(f"tool_choice names {choice.function.name!r}, which is not in tools",
                                      field="tool_choice")
        return self


class FunctionCallIn(_In):
    name: str = Field(max_length=64, description="Function called.")
    arguments: str = Field(max_length=1_000_000, description="Arguments as JSON text.")


class ToolCallIn(_In):
    """A tool call in an assistant message sent back in the conversation."""

    id: str = Field(max_length=256, description="Call id; tool messages refer to it.")
    type: Literal["function"] = Field("function", description="Only function calls.")
    function: FunctionCallIn = Field(description="The call.")

    def as_template_dict(self) -> dict:
        """The transformers convention: arguments as an object when they parse (templates
        write them with ``tojson``), else the text as sent."""
        try:
            args = json.loads(self.function.arguments)
        except ValueError:
            args = self.function.arguments
        return {"id": self.id, "type": "function", "function": {"name": self.function.name, "arguments": args}}


# ----- responses -------------------------------------------------------------------------


class FunctionCall(BaseModel):
    name: str
    arguments: str


class AssistantToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: FunctionCallDelta


class ToolCallsDelta(BaseModel):
    """A streamed delta that carries tool calls (content null)."""

    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: list[ToolCallDelta]
