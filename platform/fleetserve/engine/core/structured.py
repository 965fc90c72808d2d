"""Constrained decoding: compiled grammars, per-request matchers, and the batch's token mask.

Backend: **xgrammar** (also vLLM's default). Chosen over llguidance because it ships a CPU
wheel for this platform that needs nothing beyond the torch already installed, has a CPU
kernel for applying the bitmask in place, compiles JSON schemas (and pydantic models),
regexes and EBNF with the same API, and its matcher is a small object with
``accept_token`` / ``fill_next_token_bitmask`` / ``is_terminated`` -- exactly the per-request
state the engine keeps.

Contract with the engine:

- :class:`GrammarCompiler` is built once per tokenizer; ``matcher(spec)`` compiles ``spec``
  (once per distinct spec: a bounded LRU) and returns a fresh :class:`GrammarState`.
- A request's :class:`GrammarState` is created at admission and advanced once per *sampled*
  token (``accept``). Preemption keeps output tokens, and recompute only re-runs the forward
  pass, so nothing is fed twice and the state is never reset.
- :func:`apply_grammar_masks` masks the rows of a step's logits that have a grammar.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any, Optional, Sequence

import torch

from fleetserve.engine.sampling_params import StructuredOutput
from fleetserve.errors import InvalidRequestError

DEFAULT_CACHE_SIZE = 128
# xgrammar prefixes its C++ errors with "[time] /path/file.cc:line: "; the client needs the rest.
_CPP_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")
# xgrammar 0.2.9 writes a length-bounded JSON string (minLength / maxLength) with this
# character class, which lets raw control characters (invalid in JSON) through. We compile
# the schema's EBNF with the class JSON allows instead.
_LOOSE_STRING_CHAR = r'[^\"\\\r\n]'
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'


def _xgr():
    import xgrammar

    return xgrammar


def build_tokenizer_info(hf_tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]):
    """xgrammar's view of the vocabulary, sized to the model's logits (``vocab_size`` may be
    padded past the tokenizer's). Special tokens (``<|bos|>``, role markers) are blanked so
    the grammar never allows them inside constrained text; the stop tokens stay allowed
    where the grammar may end."""
    xgr = _xgr()
    auto = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size,
                                              stop_token_ids=list(stop_token_ids) or None)
    vocab = [""] * vocab_size
    for token, idx in hf_tokenizer.get_vocab().items():
        if idx < vocab_size:
            vocab[idx] = token
    for idx in getattr(hf_tokenizer, "all_special_ids", []):
        if idx < vocab_size and idx not in stop_token_ids:
            vocab[idx] = ""
    return xgr.TokenizerInfo(vocab, auto.vocab_type, vocab_size=vocab_size,
                             stop_token_ids=auto.stop_token_ids, add_prefix_space=auto.add_prefix_space)


class GrammarState:
    """One request's position in its grammar."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Any):
        self.matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar rejects it."""
        return bool(self.matcher.accept_token(token_id))

    def fast_forward(self, token_ids: Sequence[int]) -> None:
        """Advance by a continuation's already-generated tokens (one matcher step each: cheap
        next to their prefill); raises InvalidRequestError when the grammar rejects them."""
        for t in token_ids:
            if not self.accept(t):
                raise InvalidRequestError(f"resume_token_ids: the grammar rejects token {t}",
                                          field="resume_token_ids")

    @property
    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)


class GrammarCompiler:
    """Compiles :class:`StructuredOutput` specs for one tokenizer, caching the last
    ``cache_size`` distinct ones. Thread-safe (``AsyncEngine`` validates off its loop)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int],
                 cache_size: int = DEFAULT_CACHE_SIZE):
        xgr = _xgr()
        self.vocab_size = vocab_size
        self.info = build_tokenizer_info(hf_tokenizer, vocab_size, stop_token_ids)
        # Our LRU is the cache; xgrammar's own one would be unbounded by entries.
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[StructuredOutput, Any] = OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def compile(self, spec: StructuredOutput) -> Any:
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is not None:
                self._cache.move_to_end(spec)
                self.hits += 1
                return compiled
        compiled = self._compile_uncached(spec)
        with self._lock:
            self.misses += 1
            self._cache[spec] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, spec: StructuredOutput) -> GrammarState:
        return GrammarState(_xgr().GrammarMatcher(self.compile(spec)))

    def _compile_uncached(self, spec: StructuredOutput) -> Any:
        c = self._compiler
        try:
            if spec.kind in ("json_object", "json_schema"):
                return c.compile_grammar(json_schema_ebnf(spec.value or '{"type":"object"}'))
            if spec.kind == "regex":
                return c.compile_regex(spec.value)
            if spec.kind == "choice":
                alts = " | ".join(json.dumps(choice) for choice in spec.choices)
                return c.compile_grammar(f"root ::= {alts}")
            return c.compile_grammar(spec.value)
        except RuntimeError as exc:
            msg = _CPP_PREFIX.sub("", str(exc).strip()).splitlines()[0]
            raise InvalidRequestError(f"{spec.kind} cannot be compiled: {msg}", field="response_format") from exc


def json_schema_ebnf(schema: str) -> str:
    """The schema as EBNF: compact JSON (no free whitespace, so a model cannot pad forever
    between tokens), with bounded strings repaired (see ``_LOOSE_STRING_CHAR``)."""
    ebnf = str(_xgr().Grammar.from_json_schema(schema, any_whitespace=False))
    return ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)


class GrammarBatch:
    """The rows of one sampling batch that carry a grammar, and their next-token mask."""

    __slots__ = ("rows", "states")

    def __init__(self, rows: list[int], states: list[GrammarState]):
        self.rows = rows
        self.states = states

    @classmethod
    def of(cls, states: Sequence[Optional[GrammarState]]) -> Optional["GrammarBatch"]:
        rows = [i for i, s in enumerate(states) if s is not None]
        return cls(rows, [states[i] for i in rows]) if rows else None

    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens each grammar forbids to -inf, in place."""
        xgr = _xgr()
        bitmask = xgr.allocate_token_bitmask(len(logits), logits.shape[-1])
        for row, state in zip(self.rows, self.states):
            state.fill_mask(bitmask, row)
        xgr.apply_token_bitmask_inplace(logits, bitmask, indices=self.rows)
