"""Sampling parameters (shaped like vLLM's), validated on construction.

A dataclass rather than a pydantic model: one is built per request on the hot path, and
the API layer already validated the wire format with pydantic. Every failure raises
:class:`fleetserve.errors.InvalidRequestError` naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from fleetserve.errors import InvalidRequestError

MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 300
MAX_STRUCTURED_CHARS = 100_000  # schema / regex / grammar text
MAX_CHOICES = 256

StructuredKind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]
STRUCTURED_KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")
# JSON Schema keywords the grammar backend (xgrammar) would accept but not enforce: a
# request using one gets a 400 naming it rather than output that silently ignores it.
UNSUPPORTED_SCHEMA_KEYWORDS = frozenset({
    "not", "if", "then", "else", "uniqueItems", "contains", "minContains", "maxContains",
    "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties",
    "unevaluatedItems", "propertyNames", "$dynamicRef", "$recursiveRef",
})
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties")


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the output's shape (the engine enforces it with a grammar).

    ``kind`` picks the payload: ``json_schema`` -> ``value`` is the schema as JSON text
    (compact text: equal schemas share one compiled grammar; key order is kept, it is the
    output's property order); ``regex`` and
    ``grammar`` (EBNF) -> ``value`` is the pattern / grammar; ``choice`` -> ``choices``;
    ``json_object`` -> any JSON object, no payload. Frozen and made of strings, so it is
    hashable (the compile cache's key) and pickles across the engine process pipe.
    """

    kind: StructuredKind
    value: Optional[str] = None
    choices: tuple[str, ...] = ()

    @classmethod
    def json_schema(cls, schema: Any) -> "StructuredOutput":
        """From a schema given as a dict or JSON text."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidRequestError(f"json_schema is not valid JSON: {exc}", field="response_format") from exc
        if not isinstance(schema, (dict, bool)):
            raise InvalidRequestError("json_schema must be a JSON object", field="response_format")
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidRequestError(msg, field="response_format")

        if self.kind not in STRUCTURED_KINDS:
            bad(f"structured output kind must be one of {STRUCTURED_KINDS}, got {self.kind!r}")
        if self.kind == "choice":
            if not self.choices or len(self.choices) > MAX_CHOICES:
                bad(f"choice needs 1-{MAX_CHOICES} options")
            if any(not isinstance(c, str) or not c for c in self.choices):
                bad("choice options must be non-empty strings")
            object.__setattr__(self, "choices", tuple(self.choices))
        elif self.kind != "json_object":
            if not isinstance(self.value, str) or not self.value:
                bad(f"{self.kind} needs a non-empty payload")
            if len(self.value) > MAX_STRUCTURED_CHARS:
                bad(f"{self.kind} is longer than {MAX_STRUCTURED_CHARS} characters")
        if self.kind == "json_schema":
            check_schema_features(json.loads(self.value))


def check_schema_features(schema: Any, path: str = "#") -> None:
    """Raise ``InvalidRequestError`` naming the first keyword the backend cannot enforce
    (and its place in the schema). Walks schema positions only, so a property that happens
    to be named ``not`` is fine."""
    if not isinstance(schema, dict):
        return
    for key in schema:
        if key in UNSUPPORTED_SCHEMA_KEYWORDS:
            raise InvalidRequestError(
                f"json_schema uses the unsupported keyword {key!r} at {path}", field="response_format")
    ref = schema.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise InvalidRequestError(f"json_schema uses an unsupported remote $ref {ref!r} at {path}",
                                  field="response_format")
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else ():
            check_schema_features(sub, f"{path}/{key}/{name}")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []) if isinstance(schema.get(key), list) else ():
            check_schema_features(sub, f"{path}/{key}/{i}")
    for key in _SUBSCHEMA_ONE:
        check_schema_features(schema.get(key), f"{path}/{key}")


@dataclass
class SamplingParams:
    """How to sample one completion.

    ``temperature == 0`` means greedy. ``seed`` makes sampling reproducible for this request
    regardless of what else is in the batch. ``n`` completions are produced by the caller
    (offline ``LLM`` / API layer) as ``n`` engine requests with seeds ``seed + i``.
    """

    n: int = 1
    max_tokens: Optional[int] = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 disables
    min_p: float = 0.0
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: Optional[int] = None  # top-n logprobs per generated token
    include_stop_str_in_output: bool = False
    structured: Optional[StructuredOutput] = None  # constrained decoding (json, regex, ...)
    logit_bias: Optional[dict[int, float]] = None  # token id -> added to its logit before sampling (OpenAI)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise InvalidRequestError(f"{name} {msg}", field=name)

        if not isinstance(self.n, int) or self.n < 1 or self.n > 128:
            bad("n", f"must be an integer in [1, 128], got {self.n!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if not (0.0 <= self.temperature <= 2.0):
            bad("temperature", f"must be in [0, 2], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", f"must be -1, 0 or a positive integer, got {self.top_k!r}")
        if not (0.0 <= self.min_p <= 1.0):
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if not (-2.0 <= self.presence_penalty <= 2.0):
            bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not (-2.0 <= self.frequency_penalty <= 2.0):
            bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if not (0.0 < self.repetition_penalty <= 2.0):
            bad("repetition_penalty", f"must be in (0, 2], got {self.repetition_penalty}")
        if self.seed is not None and (not isinstance(self.seed, int) or not (0 <= self.seed < 2**63)):
            bad("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not (0 <= self.logprobs <= MAX_LOGPROBS)):
            bad("logprobs", f"must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if len(self.stop) > 16 or any((not isinstance(s, str)) or s == "" for s in self.stop):
            bad("stop", "must be at most 16 non-empty strings")
        if any((not isinstance(t, int)) or t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative integers")
        if self.logit_bias is not None and (len(self.logit_bias) > MAX_LOGIT_BIAS or any(
                not isinstance(t, int) or t < 0 or not -100.0 <= b <= 100.0 for t, b in self.logit_bias.items())):
            bad("logit_bias", f"must map at most {MAX_LOGIT_BIAS} token ids to biases in [-100, 100]")
        if self.structured is not None and not isinstance(self.structured, StructuredOutput):
            bad("structured", "must be a StructuredOutput")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
