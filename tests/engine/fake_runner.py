"""A deterministic fake model runner honouring ModelRunnerProtocol (pure-logic tests only).

Its "model" reads the K/V pool for real: each block slot stores the token written there,
and the next token is a hash of the whole context read back through the block table. So a
wrong block table, a prefix-cache block reused after eviction, a lost swap or a skipped
position changes the output, and tests catch it by comparing with ``reference``.

With ``layered=True`` it has two "layers": the first writes every item's tokens, then
``between_layers`` runs, then the second reads each item's whole context back to compute
its logits, so anything the callback wrote over a paused step's blocks changes the output.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from fleetserve.engine.core.runner_types import ModelInput

_MOD = (1 << 61) - 1


def context_hash(tokens: Sequence[int]) -> int:
    h = 0
    for t in tokens:
        h = (h * 1_000_003 + t + 1) % _MOD
    return h


class FakeRunner:
    def __init__(
        self,
        *,
        vocab_size: int = 64,
        block_size: int = 4,
        max_model_len: int = 256,
        bytes_per_block: int = 1024,
        margin: float = 10.0,
        eos_token_ids: Sequence[int] = (),
        seed: int = 0,
        layered: bool = False,
    ):
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.eos_token_ids = list(eos_token_ids)
        self._bytes_per_block = bytes_per_block
        self._margin = margin
        gen = torch.Generator().manual_seed(seed)
        # Background logits so sampled (non-greedy) rows see a real distribution.
        self._base = torch.randn(97, vocab_size, generator=gen)
        self.kv: Optional[list[list[Optional[int]]]] = None
        self.host: list[list[Optional[int]]] = []
        self.fail_on_token: Optional[int] = None  # raise when a batch item contains it
        self.num_execute_calls = 0
        self.num_swapped_out = 0
        self.num_swapped_in = 0
        self.batch_sizes: list[int] = []
        self.supports_between_layers = layered
        self.num_paused_passes = 0  # passes whose between_layers callback ran

    # ---------------------------------------------------------------- protocol
    def kv_bytes_per_block(self) -> int:
        return self._bytes_per_block

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        self.kv = [[None] * self.block_size for _ in range(num_blocks)]
        self.host = [[None] * self.block_size for _ in range(num_host_blocks)]

    def release_kv_cache(self) -> None:
        self.kv = None

    def swap_out(self, mapping) -> None:
        for dev, host in mapping:
            self.host[host] = list(self.kv[dev])
            self.num_swapped_out += 1

    def swap_in(self, mapping) -> None:
        for host, dev in mapping:
            self.kv[dev] = list(self.host[host])
            self.num_swapped_in += 1

    def execute(self, model_input: ModelInput, between_layers=None) -> torch.Tensor:
        if self.kv is None:
            raise RuntimeError("no KV pool")
        if between_layers is not None and not self.supports_between_layers:
            raise TypeError("between_layers given to a runner without layered=True")
        self.num_execute_calls += 1
        self.batch_sizes.append(len(model_input.items))
        rows = []
        for item in model_input.items:
            if self.fail_on_token is not None and self.fail_on_token in item.token_ids:
                raise RuntimeError(f"injected failure on token {self.fail_on_token}")
            self._read(item.block_table, item.start_pos)  # everything before must be written
            for j, t in enumerate(item.token_ids):
                p = item.start_pos + j
                self.kv[item.block_table[p // self.block_size]][p % self.block_size] = t
            if not self.supports_between_layers and item.needs_logits:
                rows.append(self.logits_for(self._read(item.block_table, item.start_pos + len(item.token_ids))))
        if self.supports_between_layers:
            if between_layers is not None:
                between_layers()
                self.num_paused_passes += 1
            for item in model_input.items:  # the second "layer": read back after the pause
                if item.needs_logits:
                    rows.append(self.logits_for(self._read(item.block_table, item.start_pos + len(item.token_ids))))
        return torch.stack(rows) if rows else torch.empty(0, self.vocab_size)

    def _read(self, table, length: int) -> list[int]:
        bs = self.block_size
        context = []
        for p in range(length):
            t = self.kv[table[p // bs]][p % bs]
            if t is None:
                raise AssertionError(f"read of unwritten K/V at position {p}")
            context.append(t)
        return context

    # ---------------------------------------------------------------- the fake model
    def next_token(self, context: Sequence[int]) -> int:
        return context_hash(context) % self.vocab_size

    def logits_for(self, context: Sequence[int]) -> torch.Tensor:
        h = context_hash(context)
        row = self._base[h % 97].clone()
        row[h % self.vocab_size] += self._margin
        return row

    def reference(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """Greedy output of the fake model, computed without any engine."""
        context = list(prompt)
        out = []
        for _ in range(max_tokens):
            t = self.next_token(context)
            out.append(t)
            context.append(t)
            if t in self.eos_token_ids:
                break
        return out
