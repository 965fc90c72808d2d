"""The model runner: fleetserve's decoder plus the paged K/V pool of one replica.

It implements :class:`fleetserve.engine.runner_types.ModelRunnerProtocol`. A step's items
(prefill chunks and decode tokens of different requests) become one flat token batch and
run in ONE forward pass; the per-step index tensors (tokens, positions, cache slots,
padded block tables, masks) are built once here with a handful of vectorised ops, so the
per-layer work is pure tensor code. The same code runs on CPU and CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.model.attention import AttentionMetadata, PrefillMeta
from fleetserve.engine.model.layers import rotary_tables
from fleetserve.engine.model.loader import load_model
from fleetserve.engine.runner_types import ModelInput, SeqBatchItem
from fleetserve.errors import ConfigError, EngineError


class ModelRunner:
    """Owns the weights and the paged K/V pool; see ``ModelRunnerProtocol`` for the contract.

    ``ModelRunner(EngineConfig(...))`` or ``ModelRunner("/path/to/ckpt", block_size=16, ...)``
    (keyword overrides are EngineConfig fields).
    """

    def __init__(self, config: EngineConfig | str | Path, **overrides):
        if isinstance(config, (str, Path)):
            config = EngineConfig(model=str(config), **overrides)
        elif overrides:
            config = EngineConfig(**{**config.model_dump(), **overrides})
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.model, self.model_config = load_model(config.model, self.device, self.dtype)
        mc = self.model_config
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len or mc.max_position_embeddings
        self.vocab_size = mc.vocab_size
        self.eos_token_ids = list(mc.eos_token_ids)
        self.bos_token_id: Optional[int] = mc.bos_token_id
        num_positions = max(self.max_model_len, mc.max_position_embeddings)
        self._rot = rotary_tables(mc.rope, mc.head_dim, num_positions, mc.max_position_embeddings).to(self.device)
        # Heads before blocks: see fleetserve.engine.model.attention for why.
        self._kv_shape = (mc.num_layers, 2, mc.num_kv_heads, 0, self.block_size, mc.head_dim)
        self._num_kv_heads = mc.num_kv_heads
        self._group = mc.num_heads // mc.num_kv_heads
        self.kv_caches: Optional[torch.Tensor] = None
        self.host_kv: Optional[torch.Tensor] = None
        self.num_blocks = 0
        self.num_host_blocks = 0
        # Position index of every slot in a block row, reused to build masks.
        self._arange = torch.arange(self.max_model_len + self.block_size)

    # ---------------------------------------------------------------- K/V pool

    def kv_bytes_per_block(self) -> int:
        layers, two, kvh, _, bs, hd = self._kv_shape
        return layers * two * bs * kvh * hd * torch.tensor([], dtype=self.dtype).element_size()

    def _pool_shape(self, num_blocks: int) -> tuple[int, ...]:
        shape = list(self._kv_shape)
        shape[3] = num_blocks
        return tuple(shape)

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        if num_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {num_blocks}", field="num_kv_blocks")
        # Zeros, not empty: padded reads of never-written slots are masked, but a NaN bit
        # pattern there would still poison ``softmax @ V``.
        self.kv_caches = torch.zeros(self._pool_shape(num_blocks), device=self.device, dtype=self.dtype)
        self.num_blocks = num_blocks
        # Row offsets of each (K|V, head) plane in the 2-D views the attention uses.
        self._block_plane = torch.arange(2 * self._num_kv_heads)[:, None] * num_blocks
        self._slot_plane = (torch.arange(self._num_kv_heads) * num_blocks * self.block_size)[None, :]
        if num_host_blocks:
            self.host_kv = torch.zeros(
                self._pool_shape(num_host_blocks), dtype=self.dtype, pin_memory=self.device.type == "cuda"
            )
        else:
            self.host_kv = None
        self.num_host_blocks = num_host_blocks

    def release_kv_cache(self) -> None:
        self.kv_caches = None
        self.host_kv = None
        self.num_blocks = self.num_host_blocks = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def swap_out(self, mapping: Sequence[tuple[int, int]]) -> None:
        if not mapping:
            return
        if self.host_kv is None or self.kv_caches is None:
            raise EngineError("swap_out needs a device pool and a host pool (allocate_kv_cache(num_host_blocks>0))")
        dev = torch.tensor([d for d, _ in mapping], device=self.device)
        host = torch.tensor([h for _, h in mapping])
        self.host_kv.index_copy_(3, host, self.kv_caches.index_select(3, dev).to("cpu"))

    def swap_in(self, mapping: Sequence[tuple[int, int]]) -> None:
        if not mapping:
            return
        if self.host_kv is None or self.kv_caches is None:
            raise EngineError("swap_in needs a device pool and a host pool (allocate_kv_cache(num_host_blocks>0))")
        host = torch.tensor([h for h, _ in mapping])
        dev = torch.tensor([d for _, d in mapping], device=self.device)
        blocks = self.host_kv.index_select(3, host).to(self.device, non_blocking=True)
        self.kv_caches.index_copy_(3, dev, blocks)

    # ---------------------------------------------------------------- forward

    @torch.inference_mode()
    def execute(self, model_input: ModelInput) -> torch.Tensor:
        if self.kv_caches is None:
            raise EngineError("execute called without a KV pool (allocate_kv_cache first, or wake the engine)")
        items = model_input.items
        if not items:
            return torch.empty(0, self.vocab_size)
        token_ids, positions, meta, logit_rows = self._prepare(items)
        rot = self._rot.index_select(0, positions).unsqueeze(1)
        hidden = self.model(token_ids, rot, self.kv_caches, meta)
        if not logit_rows:
            return torch.empty(0, self.vocab_size)
        rows = torch.tensor(logit_rows, device=self.device)
        return self.model.logits(hidden.index_select(0, rows)).to("cpu")

    def _prepare(self, items: list[SeqBatchItem]):
        """Flat layout: all single-token items first (one batched attention call), then
        every multi-token chunk as a contiguous run."""
        bs = self.block_size
        decodes = [i for i, it in enumerate(items) if len(it.token_ids) == 1]
        prefills = [i for i, it in enumerate(items) if len(it.token_ids) != 1]
        last_row = [0] * len(items)

        tokens: list[int] = []
        slots: list[int] = []
        dec_pos: list[int] = []
        dec_tables: list[list[int]] = []
        if decodes:
            max_blocks = max(items[i].start_pos for i in decodes) // bs + 1
            for row, i in enumerate(decodes):
                it = items[i]
                pos = it.start_pos
                table = it.block_table
                nb = pos // bs + 1
                tokens.append(it.token_ids[0])
                dec_pos.append(pos)
                slots.append(table[pos // bs] * bs + pos % bs)
                # Padding blocks point at block 0; the mask hides them.
                dec_tables.append(list(table[:nb]) + [0] * (max_blocks - nb))
                last_row[i] = row
        nd = len(decodes)
        pos_parts = [torch.tensor(dec_pos, dtype=torch.long)] if nd else []
        slot_parts = [torch.tensor(slots, dtype=torch.long)] if nd else []

        dev = self.device
        prefill_meta: list[PrefillMeta] = []
        row = nd
        for i in prefills:
            it = items[i]
            q_len = len(it.token_ids)
            if q_len == 0:
                raise EngineError("a batch item has no tokens")
            start, end = it.start_pos, it.start_pos + q_len
            if end > self._rot.shape[0]:
                raise EngineError(f"position {end - 1} is beyond the model's rotary table ({self._rot.shape[0]})")
            tokens.extend(it.token_ids)
            pos = torch.arange(start, end)
            nb = (end - 1) // bs + 1
            table = torch.tensor(list(it.block_table[:nb]), dtype=torch.long)
            pos_parts.append(pos)
            slot_parts.append(table[pos // bs] * bs + pos % bs)
            meta = PrefillMeta(start_row=row, end_row=row + q_len)
            if start > 0:
                meta.gather_rows = (self._block_plane + table[None, :]).view(-1).to(dev)
                meta.context_len = nb * bs
                mask = self._arange[: nb * bs][None, :] <= pos[:, None]
                meta.mask = (mask.repeat(self._group, 1) if self._group > 1 else mask).to(dev)
            prefill_meta.append(meta)
            row += q_len
            last_row[i] = row - 1

        slot_t = slot_parts[0] if len(slot_parts) == 1 else torch.cat(slot_parts)
        meta = AttentionMetadata(
            write_rows=(self._slot_plane + slot_t[:, None]).to(dev),
            v_offset=self._num_kv_heads * self.num_blocks * bs,
            num_decodes=nd,
            prefills=prefill_meta,
        )
        if nd:
            max_blocks = len(dec_tables[0])
            tables = torch.tensor(dec_tables, dtype=torch.long).view(-1)
            meta.decode_gather_rows = (self._block_plane + tables[None, :]).view(-1).to(dev)
            meta.decode_context_len = max_blocks * bs
            visible = self._arange[: max_blocks * bs][None, :] <= pos_parts[0][:, None]
            mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, float("-inf"))
            meta.decode_mask = mask.view(1, nd, 1, -1).to(dev)
        positions = (pos_parts[0] if len(pos_parts) == 1 else torch.cat(pos_parts)).to(dev)
        token_ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        logit_rows = [last_row[i] for i, it in enumerate(items) if it.needs_logits]
        return token_ids, positions, meta, logit_rows
