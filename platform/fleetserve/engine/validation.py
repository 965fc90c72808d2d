"""Admission checks: a request that can never be served fails here, naming the field."""

from __future__ import annotations

from typing import Optional

from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.tokenizer import Tokenizer
from fleetserve.errors import ContextLengthError, InvalidRequestError


def validate_request(
    req: GenerateRequest,
    *,
    tokenizer: Optional[Tokenizer],
    vocab_size: int,
    max_model_len: int,
    kv_capacity_tokens: int,
) -> tuple[list[int], int]:
    """Returns the prompt token ids and the effective ``max_tokens``.

    ``max_tokens=None`` means "until the context (or the whole KV pool) is full".
    """
    if not isinstance(req.request_id, str) or not req.request_id:
        raise InvalidRequestError("request_id must be a non-empty string", field="request_id")
    if not isinstance(req.params, SamplingParams):
        raise InvalidRequestError("params must be SamplingParams", field="params")
    if not isinstance(req.priority, int) or isinstance(req.priority, bool):
        raise InvalidRequestError(f"priority must be an integer, got {req.priority!r}", field="priority")
    prompt_ids = _prompt_ids(req, tokenizer, vocab_size)
    if req.params.stop and tokenizer is None:
        raise InvalidRequestError("stop strings need a tokenizer; this engine has none", field="stop")

    _check_resume_ids(req, vocab_size)
    n = len(prompt_ids)
    limit = min(max_model_len, kv_capacity_tokens)
    if n >= max_model_len:
        raise ContextLengthError(
            f"prompt has {n} tokens; the context limit is {max_model_len} (at least one must be left to generate)",
            field="prompt",
        )
    if n >= kv_capacity_tokens:
        raise ContextLengthError(
            f"prompt has {n} tokens; the KV cache holds only {kv_capacity_tokens}", field="prompt"
        )
    max_tokens = req.params.max_tokens
    if max_tokens is None:
        return prompt_ids, limit - n
    if n + max_tokens > max_model_len:
        raise ContextLengthError(
            f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the context limit of {max_model_len}",
            field="max_tokens",
        )
    if n + max_tokens > kv_capacity_tokens:
        raise ContextLengthError(
            f"prompt ({n} tokens) + max_tokens ({max_tokens}) can never fit in the KV cache "
            f"({kv_capacity_tokens} tokens)",
            field="max_tokens",
        )
    return prompt_ids, max_tokens


def _check_resume_ids(req: GenerateRequest, vocab_size: int) -> None:
    """A continuation's tokens are output already produced: in the vocabulary, and fewer
    than ``max_tokens`` (at least one token is left to generate)."""
    ids = req.resume_token_ids
    if not ids:
        return
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or not (0 <= t < vocab_size):
            raise InvalidRequestError(
                f"resume_token_ids must be integers in [0, {vocab_size}), got {t!r}", field="resume_token_ids")
    if req.params.max_tokens is not None and len(ids) >= req.params.max_tokens:
        raise InvalidRequestError(
            f"resume_token_ids has {len(ids)} tokens; max_tokens is {req.params.max_tokens}", field="resume_token_ids")


def _prompt_ids(req: GenerateRequest, tokenizer: Optional[Tokenizer], vocab_size: int) -> list[int]:
    if (req.prompt is None) == (req.prompt_token_ids is None):
        raise InvalidRequestError("exactly one of prompt and prompt_token_ids must be given", field="prompt")
    if req.prompt is not None:
        if not isinstance(req.prompt, str):
            raise InvalidRequestError("prompt must be a string", field="prompt")
        if tokenizer is None:
            raise InvalidRequestError("this engine has no tokenizer; send prompt_token_ids", field="prompt")
        ids = tokenizer.encode(req.prompt)
        if not ids:
            raise InvalidRequestError("prompt is empty", field="prompt")
        return ids
    ids = req.prompt_token_ids
    if not ids:
        raise InvalidRequestError("prompt_token_ids is empty", field="prompt_token_ids")
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or not (0 <= t < vocab_size):
            raise InvalidRequestError(
                f"prompt_token_ids must be integers in [0, {vocab_size}), got {t!r}", field="prompt_token_ids"
            )
    return list(ids)
