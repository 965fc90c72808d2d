"""Tokenizer and chat template loaded from a checkpoint directory."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from fleetserve.errors import InvalidRequestError


class Tokenizer:
    """Thin wrapper over a Hugging Face tokenizer: what the engine and API layer need."""

    def __init__(self, hf_tokenizer: Any, eos_token_ids: Optional[Sequence[int]] = None):
        self.hf = hf_tokenizer
        ids = list(eos_token_ids or [])
        if not ids and hf_tokenizer.eos_token_id is not None:
            ids = [hf_tokenizer.eos_token_id]
        self.eos_token_ids: list[int] = ids
        self.vocab_size: int = len(hf_tokenizer)
        self._backend_decode = _backend_decoder(hf_tokenizer)

    @classmethod
    def from_pretrained(cls, path: str) -> "Tokenizer":
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path)
        return cls(hf, _eos_ids_from_checkpoint(path))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._backend_decode is not None:
            # Same result as hf.decode without its Python wrapper (the streaming hot path
            # decodes twice per token per request).
            return self._backend_decode(token_ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template", field="messages")
        try:
            return self.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja errors: malformed roles/content
            raise InvalidRequestError(f"messages could not be rendered: {exc}", field="messages") from exc

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # The template already writes the BOS token where the model expects it.
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)


def _backend_decoder(hf: Any):
    """The Rust tokenizer's decode when ``hf.decode`` would add nothing on top of it: a
    fast tokenizer with no clean-up pass (transformers skips clean-up for BPE models)."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return None
    cleanup = bool(getattr(hf, "clean_up_tokenization_spaces", False))
    forced = bool(getattr(hf, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
    if cleanup and not (type(backend.model).__name__ == "BPE" and not forced):
        return None
    return backend.decode


def _eos_ids_from_checkpoint(path: str) -> list[int]:
    """EOS ids from generation_config.json, else config.json (either may hold a list)."""
    for name in ("generation_config.json", "config.json"):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            continue
        with open(file) as f:
            eos = json.load(f).get("eos_token_id")
        if eos is None:
            continue
        return [eos] if isinstance(eos, int) else [int(e) for e in eos]
    return []


def load_tokenizer(path: str) -> Optional[Tokenizer]:
    """The checkpoint's tokenizer, or None when the directory has no tokenizer files."""
    if not os.path.isdir(path):
        return None
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, n)) for n in names):
        return None
    return Tokenizer.from_pretrained(path)
