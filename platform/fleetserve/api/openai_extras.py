"""The request fields that OpenAI's and vLLM's servers accept beyond what fleetserve acts on.

Three kinds, each declared here so it shows in the OpenAPI schema with what happens to it:

- **ignored**: accepted and dropped, because the output does not depend on them here
  (``metadata``, ``store``, ``service_tier``, ``prediction``, ``reasoning_effort``,
  ``priority`` and ``cache_salt``, which the tenant's class and key decide, ...);
- **supported**: cheap to honour, done elsewhere (``logit_bias``, ``best_of == n``,
  ``include_stop_str_in_output``, ``add_generation_prompt``, ``chat_template_kwargs``);
- **refused when set**: the value would change the output and fleetserve cannot honour it
  (``suffix``, ``use_beam_search``, ``min_tokens``, ``allowed_token_ids`` ...): a 400 naming
  the field, never a silent drop. Their defaults (null, false, 0, []) are accepted.

(Validator names differ per class on purpose: pydantic lets a same-named validator of one
base class replace another's.) Any other unknown top-level field is ignored too (vLLM's behaviour); :func:`log_ignored`
logs the names at debug level, never the values (they may hold user data).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetserve.errors import InvalidRequestError

logger = logging.getLogger(__name__)

MAX_LOGIT_BIAS = 300  # OpenAI's documented bound on logit_bias entries
IGNORED = "Accepted and ignored."


def _refuse_if_set(model: BaseModel, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(model, name)
        if value not in (None, False, 0, [], {}):
            raise InvalidRequestError(f"{name} is not supported by this server", field=name)


class SharedExtras(BaseModel):
    """Extra fields of both endpoints."""

    model_config = ConfigDict(extra="allow")

    logit_bias: Optional[dict[str, float]] = Field(
        None, description=f"Token id (as a string) -> bias in [-100, 100] added to its logit; at most {MAX_LOGIT_BIAS}.")
    best_of: Optional[int] = Field(None, ge=1, description="Accepted when equal to n (no server-side ranking).")
    include_stop_str_in_output: bool = Field(False, description="Keep the matched stop string in the text (vLLM).")
    metadata: Optional[dict[str, Any]] = Field(None, description=IGNORED)
    store: Optional[bool] = Field(None, description=IGNORED + " Nothing is stored.")
    service_tier: Optional[str] = Field(None, description=IGNORED + " The tenant's class decides priority.")
    priority: Optional[int] = Field(None, description=IGNORED + " The tenant's class decides priority (vLLM).")
    request_id: Optional[str] = Field(None, max_length=256, description=IGNORED + " (vLLM)")
    cache_salt: Optional[str] = Field(None, max_length=256, description=IGNORED + " The tenant's key salts the cache.")
    skip_special_tokens: Optional[bool] = Field(None, description=IGNORED + " Special tokens are always skipped (vLLM).")
    spaces_between_special_tokens: Optional[bool] = Field(None, description=IGNORED + " (vLLM)")
    add_special_tokens: Optional[bool] = Field(None, description=IGNORED + " (vLLM)")
    min_tokens: int = Field(0, ge=0, description="Refused unless 0 (vLLM).")
    use_beam_search: bool = Field(False, description="Refused unless false (vLLM).")
    length_penalty: Optional[float] = Field(None, description=IGNORED + " Only used by beam search (vLLM).")
    allowed_token_ids: Optional[list[int]] = Field(None, description="Refused unless null or empty (vLLM).")
    bad_words: Optional[list[str]] = Field(None, description="Refused unless null or empty (vLLM).")
    prompt_logprobs: Optional[int] = Field(None, description="Refused unless null (vLLM).")
    truncate_prompt_tokens: Optional[int] = Field(None, description="Refused unless null (vLLM).")
    return_tokens_as_token_ids: Optional[bool] = Field(None, description="Refused unless false (vLLM).")
    guided_decoding_backend: Optional[str] = Field(None, description=IGNORED + " xgrammar is the backend (vLLM).")
    guided_whitespace_pattern: Optional[str] = Field(None, description=IGNORED + " (vLLM)")
    vllm_xargs: Optional[dict[str, Any]] = Field(None, description=IGNORED + " (vLLM)")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise InvalidRequestError(f"logit_bias holds at most {MAX_LOGIT_BIAS} entries", field="logit_bias")
        for key, bias in v.items():
            if not key.isdigit() or len(key) > 9:
                raise InvalidRequestError(f"logit_bias keys are token ids, got {key[:20]!r}", field="logit_bias")
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequestError("logit_bias values must be in [-100, 100]", field="logit_bias")
        return v

    @model_validator(mode="after")
    def _refused_shared(self):
        _refuse_if_set(self, ("min_tokens", "use_beam_search", "allowed_token_ids", "bad_words", "prompt_logprobs",
                              "truncate_prompt_tokens", "return_tokens_as_token_ids"))
        return self


class CompletionExtras(BaseModel):
    suffix: Optional[str] = Field(None, description="Refused unless null (no insertion mode).")

    @model_validator(mode="after")
    def _refused_completion(self):
        _refuse_if_set(self, ("suffix",))
        return self


class ChatExtras(BaseModel):
    modalities: Optional[list[str]] = Field(None, max_length=4, description='Only ["text"].')
    audio: Optional[dict[str, Any]] = Field(None, description="Refused unless null (text only).")
    prediction: Optional[dict[str, Any]] = Field(None, description=IGNORED + " (a latency hint; output is the same)")
    reasoning_effort: Optional[str] = Field(None, description=IGNORED)
    verbosity: Optional[str] = Field(None, description=IGNORED)
    web_search_options: Optional[dict[str, Any]] = Field(None, description="Refused unless null.")
    functions: Optional[list[dict[str, Any]]] = Field(None, description="Refused unless null: use tools.")
    function_call: Optional[Any] = Field(None, description="Refused unless null: use tool_choice.")
    prompt_cache_key: Optional[str] = Field(None, max_length=1024, description=IGNORED)
    safety_identifier: Optional[str] = Field(None, max_length=1024, description=IGNORED)
    add_generation_prompt: bool = Field(True, description="End the prompt with the assistant's turn opener (vLLM).")
    continue_final_message: bool = Field(False, description="Refused unless false (vLLM).")
    documents: Optional[list[dict[str, Any]]] = Field(None, max_length=64, description="Passed to the chat template (vLLM).")
    chat_template: Optional[str] = Field(None, description="Refused unless null: the model's template is used.")
    chat_template_kwargs: Optional[dict[str, Any]] = Field(None, description="Extra variables for the chat template (vLLM).")

    @model_validator(mode="after")
    def _refused_chat(self):
        if self.modalities is not None and any(m != "text" for m in self.modalities):
            raise InvalidRequestError("modalities: only text output is supported", field="modalities")
        _refuse_if_set(self, ("audio", "web_search_options", "functions", "function_call", "continue_final_message",
                              "chat_template"))
        return self


def log_ignored(request: BaseModel) -> None:
    """Log the names of unknown top-level fields (ignored, as vLLM does), then drop them."""
    extra = request.model_extra
    if extra:
        logger.debug("ignored request fields: %s", sorted(k[:64] for k in extra))
        extra.clear()
