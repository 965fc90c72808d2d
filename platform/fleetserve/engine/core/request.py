"""A request inside the engine: its tokens, its place in the queues, and its status.

Status transitions happen in one place (the scheduler); the named state sets below are
what other modules test against, never the enum's order.
"""

from __future__ import annotations

import enum
from typing import Optional, Sequence

import torch

from fleetserve.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"            # never ran, or preempted with recompute (KV dropped)
    SWAPPED = "swapped"            # preempted with swap: KV lives in host blocks
    RUNNING = "running"
    FINISHED_STOPPED = "stopped"   # EOS, stop token id or stop string
    FINISHED_LENGTH = "length"     # max_tokens or context limit
    FINISHED_ABORTED = "aborted"
    FINISHED_ERROR = "error"


QUEUED = frozenset({RequestStatus.WAITING, RequestStatus.SWAPPED})
FINISHED = frozenset({
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED,
    RequestStatus.FINISHED_ERROR,
})

FINISH_REASON = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


class Request:
    """One sequence being generated.

    ``num_computed_tokens`` counts the leading tokens of ``all_token_ids`` whose K/V are in
    this request's blocks; the scheduler schedules the rest. Output tokens are never thrown
    away by preemption, so a resumed request continues its stream exactly where it stopped.
    Requests order by (priority, arrival, id): lower priority value runs first, so a heap of
    requests pops the one to serve next.
    """

    __slots__ = (
        "request_id", "prompt_token_ids", "params", "priority", "arrival_time", "salt",
        "output_token_ids", "all_token_ids", "num_computed_tokens", "num_cached_tokens",
        "status", "max_tokens", "generator", "sort_key", "num_preemptions",
        "block_hashes", "tenant_id", "error", "stop_reason", "grammar", "lora_key", "lora_slot",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        max_tokens: int,
        arrival_time: float,
        priority: int = 0,
        salt: Optional[str] = None,
        tenant_id: Optional[str] = None,
        resume_token_ids: Sequence[int] = (),
        lora_key: Optional[str] = None,
    ):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.priority = priority
        self.arrival_time = arrival_time
        self.salt = salt
        self.tenant_id = tenant_id
        # LoRA adapter identity (LoraRef.key; None: the base model): part of every block hash,
        # so KV computed under one adapter is never served to another. The slot is the
        # runner's, pinned by the engine while the request is unfinished.
        self.lora_key = lora_key
        self.lora_slot: Optional[int] = None
        # Effective cap after validation: params.max_tokens, or what is left of the context.
        self.max_tokens = max_tokens
        # A continuation starts with the output an earlier attempt already streamed: it is
        # recomputed like a preempted request's, and never streamed again.
        self.output_token_ids: list[int] = list(resume_token_ids)
        # Prompt + output in one list: the hot path appends once per step instead of
        # concatenating two lists.
        self.all_token_ids: list[int] = self.prompt_token_ids + self.output_token_ids
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.num_preemptions = 0
        self.status = RequestStatus.WAITING
        self.block_hashes: list[bytes] = []  # chained hashes of full blocks, grown lazily
        self.sort_key = (priority, arrival_time, request_id)
        self.error: Optional[str] = None
        self.stop_reason: Optional[str] = None
        # Constrained decoding state (core.structured.GrammarState), set at admission when
        # params.structured is given. Advanced once per sampled token; preemption keeps it.
        self.grammar = None
        self.generator: Optional[torch.Generator] = None
        if params.seed is not None and not params.greedy:
            # One generator per request: its random stream does not depend on what else
            # is in the batch, so the same seed gives the same completion. The sampler
            # reseeds it from (seed, position) before each draw, so a continuation at
            # position k draws what the uninterrupted run drew there.
            self.generator = torch.Generator()

    def __lt__(self, other: "Request") -> bool:
        return self.sort_key < other.sort_key

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, prio={self.priority}, status={self.status.value}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens})"
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def finish_reason(self) -> Optional[str]:
        return FINISH_REASON.get(self.status)

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
