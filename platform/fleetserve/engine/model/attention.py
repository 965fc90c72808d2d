"""Paged attention over block tables, for a step that mixes decodes and prefill chunks.

K/V layout of one layer: ``[2, num_kv_heads, num_blocks, block_size, head_dim]``. Heads
lead so that gathering a set of blocks for every head is ONE row gather on the 2-D view
``[2 * num_kv_heads * num_blocks, block_size * head_dim]`` (the fastest copy torch has
on CPU), and the result is already ``[2, kv_heads, seqs, context, head_dim]``: contiguous
per (head, sequence), ready for batched matmuls without another copy.

The runner lays a step's tokens out flat: every single-token item (decode) first, then
each multi-token item (prefill chunk) as one contiguous run, and builds all index tensors
once per step (:class:`AttentionMetadata`); every layer reuses them:

- decodes run in the C++ kernel of :mod:`fleetserve.engine.model.cpu_kernels` when it is
  available (CPU, float32: reads K/V in place through the block tables), else as a few
  batched attentions (groups of similar context length) over gathered blocks, padded to
  the group's longest context and masked (this path also serves CUDA);
- each prefill chunk runs its own SDPA call: on its fresh K/V with a causal mask when it
  starts at position 0, else over its gathered blocks with an explicit mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass
class PrefillMeta:
    """One multi-token item: rows ``start_row:end_row`` of the flat batch."""

    start_row: int
    end_row: int
    # Row ids (into the layer's 2-D block view) of the K and V blocks holding positions
    # 0..context-1, for every KV head. None when the chunk starts at position 0 and
    # attends only to itself.
    gather_rows: Optional[torch.Tensor] = None
    context_len: int = 0  # padded to whole blocks
    # [q_len, context_len] True where a query may attend; None with gather_rows=None.
    mask: Optional[torch.Tensor] = None


@dataclass
class DecodeGroup:
    """Single-token items at rows ``start_row:end_row``.

    Either padded gathers for the PyTorch path (``gather_rows``/``context_len``/``mask``),
    or block tables and exact lengths for the C++ kernel (``tables``/``context_lens``).
    """

    start_row: int
    end_row: int
    gather_rows: Optional[torch.Tensor] = None  # [2 * kv_heads * n * max_blocks] rows of the 2-D block view
    context_len: int = 0  # max_blocks * block_size
    mask: Optional[torch.Tensor] = None  # [1, n, 1, context_len] additive (0 / -inf)
    tables: Optional[torch.Tensor] = None  # [n, max_blocks]
    context_lens: Optional[torch.Tensor] = None  # [n]


@dataclass
class AttentionMetadata:
    """Per-step index tensors shared by every layer."""

    # [T, kv_heads] rows of the layer's [2 * kv_heads * num_slots, head_dim] view where
    # each new token's K goes; V goes ``v_offset`` rows further.
    write_rows: torch.Tensor
    v_offset: int
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    prefills: list[PrefillMeta] = field(default_factory=list)
    # Reused destination of the block gathers (every layer gathers the same amount). Fresh
    # multi-MB tensors each layer would cost more in page faults than in copying.
    workspace: Optional[torch.Tensor] = None
    # fleetserve.engine.model.cpu_kernels.paged_decode_kernel(), when decode groups use it.
    decode_kernel: Optional[Callable] = None

    def gather(self, blocks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.workspace is None:
            return blocks.index_select(0, rows)
        out = self.workspace[: rows.numel() * blocks.shape[1]].view(rows.numel(), blocks.shape[1])
        return torch.index_select(blocks, 0, rows, out=out)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """``q [T, H, D]``, new ``k``/``v`` ``[T, KVH, D]`` -> attention output ``[T, H * D]``.

    Writes the new K/V into their slots first, so every query sees its own token.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    block_size = kv_cache.shape[3]
    slots = kv_cache.view(-1, head_dim)
    slots.index_put_((meta.write_rows,), k)
    slots.index_put_((meta.write_rows + meta.v_offset,), v)
    blocks = kv_cache.view(-1, block_size * head_dim)

    outs = []
    for d in meta.decode_groups:
        n = d.end_row - d.start_row
        if d.tables is not None:
            od = meta.decode_kernel(
                q[d.start_row : d.end_row], kv_cache[0].view(num_kv_heads, -1, head_dim),
                kv_cache[1].view(num_kv_heads, -1, head_dim), d.tables, d.context_lens, block_size, head_dim**-0.5,
            )
            outs.append(od.view(n, num_heads * head_dim))
            continue
        kv = meta.gather(blocks, d.gather_rows).view(2, num_kv_heads, n, d.context_len, head_dim)
        # Query heads of one KV head form a group of rows: GQA without repeating K/V.
        qd = q[d.start_row : d.end_row].view(n, num_kv_heads, group, head_dim).transpose(0, 1) * head_dim**-0.5
        scores = torch.matmul(qd, kv[0].transpose(-1, -2)) + d.mask  # [KVH, n, group, ctx]
        od = torch.matmul(scores.softmax(dim=-1), kv[1])  # [KVH, n, group, D]
        outs.append(od.transpose(0, 1).reshape(n, num_heads * head_dim))
    for p in meta.prefills:
        q_len = p.end_row - p.start_row
        if p.gather_rows is None:
            qp = q[p.start_row : p.end_row].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
            kp = k[p.start_row : p.end_row].transpose(0, 1).unsqueeze(0)
            vp = v[p.start_row : p.end_row].transpose(0, 1).unsqueeze(0)
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=group > 1)
            outs.append(op[0].transpose(0, 1).reshape(q_len, num_heads * head_dim))
        else:
            # 4-D [1, heads, len, D] with a mask takes torch's flash kernel on CPU; the
            # 3-D form falls back to the math path (3x slower at 512 x 768).
            kv = meta.gather(blocks, p.gather_rows).view(2, 1, num_kv_heads, p.context_len, head_dim)
            qp = q[p.start_row : p.end_row].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
            op = F.scaled_dot_product_attention(qp, kv[0], kv[1], attn_mask=p.mask, enable_gqa=group > 1)
            outs.append(op[0].transpose(0, 1).reshape(q_len, num_heads * head_dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
