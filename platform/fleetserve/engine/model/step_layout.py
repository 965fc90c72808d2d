"""Turn one scheduler step (a list of :class:`SeqBatchItem`) into the flat tensors the
decoder runs on: token ids, positions, and the :class:`AttentionMetadata` every layer reuses.

Layout of the flat batch: decode items (one new token each) first, sorted by context
length and cut into a few groups of similar length (so padding to the group's longest
context wastes little memory traffic, and each group's gather stays cache-sized), then
each prefill chunk as one contiguous run. Logit rows map back to the items' own order.
With the C++ decode kernel (CPU, float32) all decodes form one group: the kernel reads
exact lengths through the block tables, so there is no padding to bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from fleetserve.engine.model.attention import AttentionMetadata, DecodeGroup, PrefillMeta
from fleetserve.engine.core.runner_types import SeqBatchItem
from fleetserve.errors import EngineError

# A new decode group starts when a context is this much shorter than the group's longest
# (bounds padding waste), or when the group's gather would exceed GROUP_BYTES.
GROUP_LENGTH_RATIO = 1.4
GROUP_BYTES = 12 << 20
MAX_GROUPS = 8


@dataclass
class StepLayout:
    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logit_rows: list[int]  # flat row of each needs_logits item, in the items' order
    # Adapter slot of every flat row (None: base model); None when no item uses an adapter.
    lora_rows: Optional[list[Optional[int]]] = None


class StepBuilder:
    """Builds :class:`StepLayout` for one pool geometry (rebuilt when the pool is)."""

    def __init__(
        self,
        *,
        block_size: int,
        num_blocks: int,
        num_kv_heads: int,
        group: int,
        head_dim: int,
        max_positions: int,
        dtype: torch.dtype,
        device: torch.device,
        decode_kernel: Optional[Callable] = None,
    ):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_kv_heads = num_kv_heads
        self.group = group
        self.max_positions = max_positions
        self.dtype = dtype
        self.device = device
        # Row offsets of each (K|V, head) plane in the 2-D views the attention uses.
        self.block_plane = torch.arange(2 * num_kv_heads)[:, None] * num_blocks
        self.slot_plane = (torch.arange(num_kv_heads) * num_blocks * block_size)[None, :]
        self.arange = torch.arange(max_positions + block_size)
        self.block_row_bytes = 2 * num_kv_heads * block_size * head_dim * torch.tensor([], dtype=dtype).element_size()
        self.row_elems = block_size * head_dim
        self.workspace: Optional[torch.Tensor] = None
        self.decode_kernel = decode_kernel

    def build(self, items: Sequence[SeqBatchItem]) -> StepLayout:
        bs = self.block_size
        decodes = [i for i, it in enumerate(items) if len(it.token_ids) == 1]
        prefills = [i for i, it in enumerate(items) if len(it.token_ids) != 1]
        last_row = [0] * len(items)
        tokens: list[int] = []
        pos_parts: list[torch.Tensor] = []
        slot_parts: list[torch.Tensor] = []
        meta = AttentionMetadata(
            write_rows=torch.empty(0), v_offset=self.num_kv_heads * self.num_blocks * bs, decode_kernel=self.decode_kernel
        )
        if decodes:
            decodes.sort(key=lambda i: items[i].start_pos, reverse=True)
            for rows in self._decode_groups([items[i] for i in decodes]):
                group_items = [(decodes[r], items[decodes[r]]) for r in rows]
                meta.decode_groups.append(self._decode_group(group_items, len(tokens), tokens, pos_parts, slot_parts, last_row))
        row = len(tokens)
        for i in prefills:
            meta.prefills.append(self._prefill(items[i], row, tokens, pos_parts, slot_parts))
            row += len(items[i].token_ids)
            last_row[i] = row - 1

        dev = self.device
        slot_t = slot_parts[0] if len(slot_parts) == 1 else torch.cat(slot_parts)
        meta.write_rows = (self.slot_plane + slot_t[:, None]).to(dev)
        meta.workspace = self._workspace(meta)
        positions = (pos_parts[0] if len(pos_parts) == 1 else torch.cat(pos_parts)).to(dev)
        token_ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        logit_rows = [last_row[i] for i, it in enumerate(items) if it.needs_logits]
        lora_rows = None
        if any(it.lora_slot is not None for it in items):
            # Rows follow the layout: decodes in their sorted order, then each prefill's run.
            lora_rows = [items[i].lora_slot for i in decodes]
            for i in prefills:
                lora_rows += [items[i].lora_slot] * len(items[i].token_ids)
        return StepLayout(token_ids, positions, meta, logit_rows, lora_rows)

    # ------------------------------------------------------------ decodes

    def _decode_groups(self, sorted_items: list[SeqBatchItem]) -> list[range]:
        """Cut decodes (longest context first) into groups of similar length."""
        if self.decode_kernel is not None:
            return [range(len(sorted_items))]  # the kernel reads exact lengths: no padding
        bs = self.block_size
        groups, start, group_max = [], 0, 0
        for r, it in enumerate(sorted_items):
            nb = it.start_pos // bs + 1
            if r > start and len(groups) < MAX_GROUPS - 1:
                too_short = nb * GROUP_LENGTH_RATIO < group_max
                too_big = (r - start + 1) * group_max * self.block_row_bytes > GROUP_BYTES
                if too_short or too_big:
                    groups.append(range(start, r))
                    start = r
            if r == start:
                group_max = nb
        groups.append(range(start, len(sorted_items)))
        return groups

    def _decode_group(self, group_items, first_row, tokens, pos_parts, slot_parts, last_row) -> DecodeGroup:
        bs = self.block_size
        max_blocks = group_items[0][1].start_pos // bs + 1
        positions, slots, tables = [], [], []
        for r, (i, it) in enumerate(group_items):
            pos, table = it.start_pos, it.block_table
            nb = pos // bs + 1
            tokens.append(it.token_ids[0])
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            # Padding blocks point at block 0; the mask hides them.
            tables.append(list(table[:nb]) + [0] * (max_blocks - nb))
            last_row[i] = first_row + r
        pos_t = torch.tensor(positions, dtype=torch.long)
        pos_parts.append(pos_t)
        slot_parts.append(torch.tensor(slots, dtype=torch.long))
        n = len(group_items)
        if self.decode_kernel is not None:
            return DecodeGroup(
                start_row=first_row, end_row=first_row + n,
                tables=torch.tensor(tables, dtype=torch.long), context_lens=pos_t + 1,
            )
        visible = self.arange[: max_blocks * bs][None, :] <= pos_t[:, None]
        mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, float("-inf"))
        flat_tables = torch.tensor(tables, dtype=torch.long).view(-1)
        return DecodeGroup(
            start_row=first_row,
            end_row=first_row + n,
            gather_rows=(self.block_plane + flat_tables[None, :]).view(-1).to(self.device),
            context_len=max_blocks * bs,
            mask=mask.view(1, n, 1, -1).to(self.device),
        )

    # ------------------------------------------------------------ prefills

    def _prefill(self, it: SeqBatchItem, row: int, tokens, pos_parts, slot_parts) -> PrefillMeta:
        bs = self.block_size
        q_len = len(it.token_ids)
        if q_len == 0:
            raise EngineError("a batch item has no tokens")
        start, end = it.start_pos, it.start_pos + q_len
        if end > self.max_positions:
            raise EngineError(f"position {end - 1} is beyond the model's rotary table ({self.max_positions})")
        tokens.extend(it.token_ids)
        pos = torch.arange(start, end)
        nb = (end - 1) // bs + 1
        table = torch.tensor(list(it.block_table[:nb]), dtype=torch.long)
        pos_parts.append(pos)
        slot_parts.append(table[pos // bs] * bs + pos % bs)
        meta = PrefillMeta(start_row=row, end_row=row + q_len)
        if start > 0:
            meta.gather_rows = (self.block_plane + table[None, :]).view(-1).to(self.device)
            meta.context_len = nb * bs
            meta.mask = (self.arange[: nb * bs][None, :] <= pos[:, None]).to(self.device)
        return meta

    def _workspace(self, meta: AttentionMetadata) -> torch.Tensor:
        """A buffer big enough for the largest block gather of this step, grown on demand."""
        rows = max(
            [g.gather_rows.numel() for g in meta.decode_groups if g.gather_rows is not None]
            + [p.gather_rows.numel() for p in meta.prefills if p.gather_rows is not None]
            + [0]
        )
        if self.workspace is None or self.workspace.numel() < rows * self.row_elems:
            self.workspace = torch.empty(max(rows * self.row_elems, 1 << 16), dtype=self.dtype, device=self.device)
        return self.workspace
