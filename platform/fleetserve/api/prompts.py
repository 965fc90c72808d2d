"""Prompt rendering and tokenization at the ingress.

The ingress counts prompt tokens *before* dispatch (admission charges prompt + max_tokens,
and too-long contexts are rejected without touching a replica), so it tokenizes itself.
It uses the Rust ``tokenizers`` library and jinja2 directly instead of transformers: the
same tokenizer.json and chat template, without transformers' import time and memory in
every ingress process. Rendering mirrors transformers' ``apply_chat_template`` (sandboxed
jinja2 with trim_blocks/lstrip_blocks, then encoding without extra special tokens); tests
check parity against the engine's own tokenizer.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

from fleetserve.errors import InvalidRequestError


class PromptRenderer:
    """Text <-> token ids for one checkpoint."""

    def __init__(self, tokenizer, chat_template: Optional[str], special_tokens: dict[str, str]):
        self._tok = tokenizer
        self._special = special_tokens
        self._template = _compile(chat_template) if chat_template else None

    @classmethod
    def from_checkpoint(cls, path: str) -> "PromptRenderer":
        from tokenizers import Tokenizer

        root = Path(path)
        tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        cfg_path = root / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        template = cfg.get("chat_template")
        jinja_path = root / "chat_template.jinja"
        if template is None and jinja_path.exists():
            template = jinja_path.read_text()
        special = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(tok, template, {k: v for k, v in special.items() if v is not None})

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def render_chat(self, messages: list[dict]) -> list[int]:
        if self._template is None:
            raise InvalidRequestError("this model has no chat template; use /v1/completions", field="messages")
        try:
            text = self._template.render(messages=messages, add_generation_prompt=True, **self._special)
        except Exception as exc:  # template errors are the caller's conversation shape
            raise InvalidRequestError(f"cannot render the conversation: {exc}", field="messages") from None
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)


def _token_text(v) -> Optional[str]:
    if isinstance(v, dict):  # AddedToken serialized as a dict
        return v.get("content")
    return v


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)
