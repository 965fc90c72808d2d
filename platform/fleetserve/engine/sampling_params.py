"""Sampling parameters (shaped like vLLM's), validated on construction.

A dataclass rather than a pydantic model: one is built per request on the hot path, and
the API layer already validated the wire format with pydantic. Every failure raises
:class:`fleetserve.errors.InvalidRequestError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fleetserve.errors import InvalidRequestError

MAX_LOGPROBS = 20


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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
