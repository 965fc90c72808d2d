"""Prompt rendering and tokenization at the ingress.

The ingress counts prompt tokens *before* dispatch (admission charges prompt + max_tokens,
and too-long contexts are rejected without touching a replica), so it tokenizes itself.
It uses the Rust ``tokenizers`` library and jinja2 directly instead of transformers: the
same tokenizer.json and chat template, without transformers' import time and memory in
every ingress process. Rendering has the semantics of transformers' ``apply_chat_template``
(``transformers.utils.chat_template_utils``): a sandboxed jinja2 environment with
trim_blocks/lstrip_blocks and the loop-controls extension, a ``tojson`` filter that does
not HTML-escape and takes indent/separators/sort_keys, the ``raise_exception`` and
``strftime_now`` globals, and ``messages``, ``tools``, ``documents``,
``add_generation_prompt`` plus the special tokens as variables; then encoding without
extra special tokens. Tests check parity against transformers on real Llama-3 and
Qwen2.5-style templates.
"""

from __future__ import annotations

import json
from datetime import datetime
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

    def render_chat(self, messages: list[dict], *, tools: Optional[list[dict]] = None,
                    documents: Optional[list[dict]] = None, add_generation_prompt: bool = True,
                    template_kwargs: Optional[dict] = None) -> list[int]:
        return self._tok.encode(self.render_chat_text(messages, tools=tools, documents=documents,
                                                      add_generation_prompt=add_generation_prompt,
                                                      template_kwargs=template_kwargs), add_special_tokens=False).ids

    def render_chat_text(self, messages: list[dict], *, tools: Optional[list[dict]] = None,
                         documents: Optional[list[dict]] = None, add_generation_prompt: bool = True,
                         template_kwargs: Optional[dict] = None) -> str:
        """The prompt text, as ``tokenizer.apply_chat_template(messages, tools=..., documents=...,
        add_generation_prompt=..., tokenize=False, **template_kwargs)`` writes it."""
        if self._template is None:
            raise InvalidRequestError("this model has no chat template; use /v1/completions", field="messages")
        variables = {**self._special, **(template_kwargs or {})}
        variables.update(messages=messages, tools=tools, documents=documents,
                         add_generation_prompt=add_generation_prompt)
        try:
            return self._template.render(**variables)
        except Exception as exc:  # template errors are the caller's conversation shape
            raise InvalidRequestError(f"cannot render the conversation: {exc}", field="messages") from None

    def token_text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=True)

    def encode_plain(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids


def _token_text(v) -> Optional[str]:
    if isinstance(v, dict):  # AddedToken serialized as a dict
        return v.get("content")
    return v


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' filter: jinja's own escapes HTML characters, and takes no separators
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2.ext
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols,
                                                                                         _generation_tag()])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _generation_tag():
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker):
    rendered as its body, as transformers does when no mask is asked for."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationTag

