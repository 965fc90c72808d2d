"""Contract between the engine core (scheduler/KV manager/sampler) and the model runner.

The scheduler decides *which* tokens of *which* requests run this step; the runner only
computes logits for them, reading and writing K/V through block tables. Prefill chunks
and decode tokens of different requests run in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch


@dataclass
class SeqBatchItem:
    """One request's slice of a step.

    ``token_ids`` are the new tokens to compute (a prefill chunk, or one decode token);
    their positions are ``start_pos .. start_pos + len(token_ids) - 1``. K/V for positions
    ``< start_pos`` are already in the blocks of ``block_table`` (block ``i`` holds positions
    ``i*block_size .. (i+1)*block_size - 1``), and the table already has room for the new ones.
    ``needs_logits`` is True when the logits of the last new token are wanted (decode, or the
    final chunk of a prefill); chunks in the middle of a prefill skip the LM head.
    """

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]
    needs_logits: bool = True
    lora_slot: Optional[int] = None  # the runner's adapter slot for these tokens; None: the base model


@dataclass
class ModelInput:
    items: list[SeqBatchItem]


class ModelRunnerProtocol(Protocol):
    """Owns the model weights and the paged K/V tensors of one replica.

    Besides its shapes, a runner declares two capabilities the engine reads directly:
    ``supports_between_layers`` (``execute`` takes a ``between_layers`` callback, which
    enables side prefills) and ``eos_token_ids`` (the checkpoint's EOS ids; empty: the
    engine falls back to the tokenizer's).
    """

    block_size: int
    max_model_len: int
    vocab_size: int
    supports_between_layers: bool
    eos_token_ids: list[int]

    def kv_bytes_per_block(self) -> int:
        """Bytes of K+V (all layers) one block of ``block_size`` tokens takes on the device."""

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        """Allocate the device pool (and a host pool for swap preemption)."""

    def execute(self, model_input: ModelInput) -> torch.Tensor:
        """Run one forward pass; return float32 logits ``[k, vocab]`` for the k items with
        ``needs_logits`` in their order.

        A runner with ``supports_between_layers`` true also takes
        ``between_layers=fn``: ``fn()`` is called between layers of the pass and may run
        ``execute`` for other sequences (disjoint blocks) before the pass goes on."""

    def swap_out(self, mapping: Sequence[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks: pairs of (device_block, host_block)."""

    def swap_in(self, mapping: Sequence[tuple[int, int]]) -> None:
        """Copy host blocks back to device blocks: pairs of (host_block, device_block)."""

    def release_kv_cache(self) -> None:
        """Free device K/V memory (engine sleep); ``allocate_kv_cache`` restores it."""
