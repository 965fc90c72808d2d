"""``POST /tokenize`` and ``POST /detokenize``, shaped like vLLM's, with the tenant's key.

The ingress tokenizes with the model's own tokenizer and chat template (the same
:class:`PromptRenderer` that counts prompt tokens for admission), so ``/tokenize`` on a
chat body gives exactly the prompt a chat completion would run. Nothing reaches a replica.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetserve.api import openapi
from fleetserve.api.openai_models import MAX_MESSAGES, MAX_TEXT_CHARS, MAX_TOKEN_IDS, ChatMessage
from fleetserve.api.openai_tools import Tool
from fleetserve.errors import InvalidRequestError


class TokenizeRequest(BaseModel):
    """A completion prompt (``prompt``) or a chat conversation (``messages``), as vLLM takes them."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128, description="Model name from /v1/models.")
    prompt: Optional[str] = Field(None, max_length=MAX_TEXT_CHARS, description="Text to tokenize.")
    messages: Optional[list[ChatMessage]] = Field(None, max_length=MAX_MESSAGES, description="A chat to render.")
    tools: Optional[list[Tool]] = Field(None, max_length=128, description="Tools for the chat template.")
    add_special_tokens: bool = Field(True, description="Prompt only: add the tokenizer's special tokens (BOS).")
    add_generation_prompt: bool = Field(True, description="Chat only: end with the assistant's turn opener.")
    return_token_strs: bool = Field(False, description="Also return each token's text.")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128, description="Model name from /v1/models.")
    tokens: list[int] = Field(max_length=MAX_TOKEN_IDS, description="Token ids to turn into text.")


class DetokenizeResponse(BaseModel):
    prompt: str


BODY_MODELS = [TokenizeRequest, DetokenizeRequest]


def build_tokenize_router(service: Any, read: Callable, authenticate: Callable) -> APIRouter:
    """``service``: the InferenceService; ``read(request, model_cls)``: the bounded body reader;
    ``authenticate(request)``: the tenant's context (401 before the body is parsed)."""
    router = APIRouter()

    async def served(request: Request, model_cls: type):
        ctx = await authenticate(request)
        req = await read(request, model_cls)
        service.authorize(ctx, req.model)
        return req, await service.served(req.model)

    @router.post("/tokenize", response_model=TokenizeResponse, summary="Prompt or chat -> token ids (vLLM).",
                 openapi_extra=openapi.json_body(TokenizeRequest), responses=openapi.errors(400, 401, 403, 404, 413, 503))
    async def tokenize(request: Request) -> TokenizeResponse:
        req, model = await served(request, TokenizeRequest)
        ids = _tokens(req, model.renderer)
        strs = [model.renderer.token_text(t) for t in ids] if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=model.info.max_model_len, tokens=ids, token_strs=strs)

    @router.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids -> text (vLLM).",
                 openapi_extra=openapi.json_body(DetokenizeRequest), responses=openapi.errors(400, 401, 403, 404, 413, 503))
    async def detokenize(request: Request) -> DetokenizeResponse:
        req, model = await served(request, DetokenizeRequest)
        if any(t < 0 or t >= model.info.vocab_size for t in req.tokens):
            raise InvalidRequestError(f"tokens must be in [0, {model.info.vocab_size})", field="tokens")
        return DetokenizeResponse(prompt=model.renderer.decode(req.tokens))

    return router


def _tokens(req: TokenizeRequest, renderer) -> list[int]:
    if (req.prompt is None) == (req.messages is None):
        raise InvalidRequestError("give exactly one of prompt and messages", field="prompt")
    if req.prompt is not None:
        return renderer.encode_plain(req.prompt, add_special_tokens=req.add_special_tokens)
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    return renderer.render_chat([m.as_template_dict() for m in req.messages], tools=tools,
                                add_generation_prompt=req.add_generation_prompt)
