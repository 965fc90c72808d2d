"""OpenAI wire format: request and response models for /v1/completions and /v1/chat/completions.

Requests are lenient the way OpenAI's and vLLM's servers are: a field either of them
ignores (``metadata``, ``store``, ``service_tier``, ``refusal: null`` echoed back, vLLM's
``skip_special_tokens`` ...) is accepted and ignored, and any other unknown top-level field
is ignored with its *name* logged at debug level (as vLLM does; values are never logged).
Fields whose value would change the output but that fleetserve cannot honour (``suffix``,
``use_beam_search``, ``min_tokens``, audio ...) are rejected with a 400 naming the field,
so nothing that matters is silently dropped (see :mod:`fleetserve.api.openai_extras`).
Every length is bounded, so validation is cheap and a hostile body cannot make the
ingress do unbounded work. Range checks mirror
:class:`fleetserve.engine.sampling_params.SamplingParams`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetserve.api.openai_extras import ChatExtras, CompletionExtras, SharedExtras, log_ignored
from fleetserve.api.openai_tools import (AssistantToolCall, FunctionCall, FunctionCallDelta, ToolCallDelta,  # noqa: F401
                                         ToolCallIn, ToolCallsDelta, ToolsFields)
from fleetserve.engine.sampling_params import MAX_LOGPROBS
from fleetserve.errors import InvalidRequestError

MAX_N = 16
MAX_STOP = 16
MAX_STOP_LEN = 256
MAX_PROMPTS = 16
MAX_MESSAGES = 256
MAX_CONTENT_PARTS = 64
MAX_TEXT_CHARS = 1_000_000
MAX_TOKEN_IDS = 131_072
MAX_SEED = 2**63 - 1

Stop = Union[str, list[str], None]


class _Request(BaseModel):
    """Nested request objects: unknown keys are ignored (OpenAI adds fields over time)."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a final chunk with usage and no choices.")


class JsonSchemaFormat(_Request):
    name: str = Field("response", min_length=1, max_length=64, description="Schema name (OpenAI).")
    description: Optional[str] = Field(None, max_length=4096, description="What the schema is for (not used).")
    schema_: Optional[dict] = Field(None, alias="schema", description="The JSON Schema the output must follow.")
    strict: Optional[bool] = Field(None, description="Accepted; the schema is always enforced.")


class ResponseFormat(_Request):
    """OpenAI ``response_format``: text, any JSON object, or a JSON Schema."""

    type: Literal["text", "json_object", "json_schema"] = Field(description="Output constraint.")
    json_schema: Optional[JsonSchemaFormat] = Field(None, description="Required when type is json_schema.")

    @model_validator(mode="after")
    def _schema(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format.json_schema.schema is required when type is json_schema")
        return self


class StructuredOutputsField(_Request):
    """vLLM's ``structured_outputs``: exactly one constraint."""

    json_: Optional[Union[dict, str]] = Field(None, alias="json", description="JSON Schema.")
    regex: Optional[str] = Field(None, max_length=100_000, description="Regular expression.")
    choice: Optional[list[str]] = Field(None, max_length=256, description="One of these strings.")
    grammar: Optional[str] = Field(None, max_length=100_000, description="EBNF grammar (xgrammar syntax).")
    json_object: Optional[bool] = Field(None, description="Any JSON object.")


class _SamplingFields(SharedExtras):
    """Fields shared by completions and chat."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128, description="Model name from /v1/models.")
    n: int = Field(1, ge=1, le=MAX_N, description="Completions per prompt.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=-1, le=100_000, description="Top-k (vLLM extension); 0 or -1 disables.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Min-p (vLLM extension).")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI presence penalty.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI frequency penalty.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0, description="Repetition penalty (vLLM extension).")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Same seed, same output; choice i uses seed + i.")
    stop: Stop = Field(None, description="Up to 16 stop strings (not included in the output).")
    stop_token_ids: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        None, max_length=MAX_STOP, description="Stop token ids (vLLM extension).")
    ignore_eos: bool = Field(False, description="Keep generating past EOS (vLLM extension; benchmarks).")
    stream: bool = Field(False, description="Server-sent events.")
    stream_options: Optional[StreamOptions] = Field(None, description="Streaming options.")
    user: Optional[str] = Field(None, max_length=256, description="End-user id (recorded, not used for auth).")
    response_format: Optional[ResponseFormat] = Field(None, description="Constrain the output: json_object or json_schema.")
    structured_outputs: Optional[StructuredOutputsField] = Field(None, description="Constrained decoding (vLLM extension).")
    guided_json: Optional[Union[dict, str]] = Field(None, description="JSON Schema (vLLM extension, older name).")
    guided_regex: Optional[str] = Field(None, max_length=100_000, description="Regex (vLLM extension, older name).")
    guided_choice: Optional[list[str]] = Field(None, max_length=256, description="Choices (vLLM extension, older name).")
    guided_grammar: Optional[str] = Field(None, max_length=100_000, description="EBNF grammar (vLLM extension, older name).")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Stop) -> Optional[list[str]]:
        if v is None:
            return None
        items = [v] if isinstance(v, str) else v
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        for s in items:
            if not s or len(s) > MAX_STOP_LEN:
                raise ValueError(f"stop strings must be 1-{MAX_STOP_LEN} characters")
        return list(items)

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of: only best_of == n is supported (no server-side ranking)", field="best_of")
        log_ignored(self)
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields, CompletionExtras):
    """POST /v1/completions."""

    prompt: Union[str, list[str], list[int]] = Field(description="Text, a batch of texts, or token ids.")
    max_tokens: Optional[int] = Field(16, ge=1, le=MAX_TOKEN_IDS, description="Tokens to generate; null: up to the context limit.")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS, description="Return top-k logprobs per token.")
    echo: bool = Field(False, description="Put the prompt in front of each choice's text (and its logprobs entries).")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, str):
            if len(v) > MAX_TEXT_CHARS:
                raise ValueError(f"prompt is longer than {MAX_TEXT_CHARS} characters")
            return v
        if not v:
            raise ValueError("prompt must not be empty")
        if isinstance(v[0], str):
            if len(v) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
            if any(len(p) > MAX_TEXT_CHARS for p in v):
                raise ValueError(f"a prompt is longer than {MAX_TEXT_CHARS} characters")
            return v
        if len(v) > MAX_TOKEN_IDS or any(t < 0 for t in v):
            raise ValueError(f"token-id prompts hold 1-{MAX_TOKEN_IDS} non-negative ids")
        return v


class ContentPart(_Request):
    type: Literal["text", "refusal", "image_url", "input_audio", "file"] = Field(description="Only text is read.")
    text: Optional[str] = Field(None, max_length=MAX_TEXT_CHARS, description="Text (type text).")
    refusal: Optional[str] = Field(None, max_length=MAX_TEXT_CHARS, description="A refusal echoed back (type refusal).")

    @model_validator(mode="after")
    def _text_only(self):
        if self.type in ("image_url", "input_audio", "file"):
            raise ValueError(f"content parts of type {self.type} are not supported (text-only models)")
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs text")
        return self


TextPart = ContentPart  # the old name


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(description="Speaker.")
    content: Union[str, list[ContentPart], None] = Field(None, description="Text or parts; null for tool-call turns.")
    name: Optional[str] = Field(None, max_length=64, description="Optional participant name (ignored).")
    tool_calls: Optional[list[ToolCallIn]] = Field(None, max_length=64, description="Calls an assistant turn made.")
    tool_call_id: Optional[str] = Field(None, max_length=256, description="The call a tool message answers.")
    refusal: Optional[str] = Field(None, max_length=MAX_TEXT_CHARS, description="Echoed assistant refusal (ignored).")

    @field_validator("content")
    @classmethod
    def _len(cls, v):
        if isinstance(v, str) and len(v) > MAX_TEXT_CHARS:
            raise ValueError(f"content is longer than {MAX_TEXT_CHARS} characters")
        if isinstance(v, list) and len(v) > MAX_CONTENT_PARTS:
            raise ValueError(f"content holds at most {MAX_CONTENT_PARTS} parts")
        return v

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.refusal)):
            raise ValueError("content is required (null only in an assistant turn with tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def as_template_dict(self) -> dict:
        """The message as transformers' chat templates expect it."""
        role = "system" if self.role == "developer" else self.role
        out = {"role": role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.as_template_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and role == "tool":
            out["name"] = self.name
        return out


class ChatCompletionRequest(_SamplingFields, ToolsFields, ChatExtras):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES, description="The conversation.")
    max_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKEN_IDS, description="Deprecated alias of max_completion_tokens.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKEN_IDS, description="Tokens to generate; null: up to the context limit.")
    logprobs: bool = Field(False, description="Return logprobs of the sampled tokens.")
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS, description="Alternatives per token; needs logprobs=true.")

    @model_validator(mode="after")
    def _logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @property
    def effective_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ----- responses -------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None  # "<model>@<version>" that served it (set after stage 3)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] = Field(default_factory=list)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]
    refusal: Optional[str] = None
    tool_calls: Optional[list[AssistantToolCall]] = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None  # "<model>@<version>" that served it (set after stage 3)


class ChatDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Union[ChatDelta, ToolCallsDelta]
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None  # "<model>@<version>" that served it (set after stage 3)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fleetserve"
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
