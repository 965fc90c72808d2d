"""Resident adapters of one runner, stacked so a step mixing adapters is two matmuls per module.

Every fused module keeps ``A`` of all slots side by side, ``[layers, in, P*S*R]``, and each
part's ``B`` stacked, ``[layers, S*R, out_part]``. A step computes ``h = x @ A`` for ALL slots
at once, zeroes each token's columns of the slots it does not use (a per-step mask from the
tokens' slot ids), and adds ``h @ B``: one batched low-rank update for base-model tokens and
any mix of adapters, no gathering of weights and no split of the batch per adapter. The
waste is the unused slots' columns, a few percent of the base matmul at ranks <= 16 on
models of a few hundred hidden units and up (docs/lora.md). B is cut to the highest slot
the step uses, so a step of one adapter in slot 0 pays for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from fleetserve.engine.lora.peft_format import FUSED_PARTS, AdapterBlocks, module_shapes
from fleetserve.engine.model.config import ModelConfig


@dataclass
class LoraStep:
    """One step's view of the slots: per fused module, A of every slot, each part's B cut to
    the slots the step uses, and the token mask."""

    a: dict[str, torch.Tensor]  # module -> [layers, in, P*S*R]
    b: dict[str, list[tuple[slice, slice, torch.Tensor]]]  # module -> per part: (h cols, y cols, [layers, k, out_j])
    masks: dict[str, torch.Tensor]  # module -> [tokens, P*S*R]

    def add(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y += ((x @ A) * mask) @ B`` for this layer's ``module`` (in place; returns ``y``).
        B is applied per part (q, k, v; gate, up): each part's rank columns feed only its own
        output columns, so multiplying by the block-diagonal whole would waste P times the work."""
        h = torch.mm(x, self.a[module][layer]).mul_(self.masks[module])
        parts = self.b[module]
        if len(parts) == 1:
            cols, _, b = parts[0]
            return y.addmm_(h[:, cols], b[layer])
        for cols, out, b in parts:
            y[:, out].addmm_(h[:, cols], b[layer])  # in place on the column slice: no temporary
        return y


class LoraSlots:
    """``num_slots`` adapter slots of rank up to ``max_rank`` for the decoder of ``cfg``.

    Column ``j*S*R + s*R + i`` of a module's stacked A is rank ``i`` of slot ``s`` for part
    ``j``; part ``j``'s B is ``[layers, S*R, out_j]`` with rows ``s*R + i``.
    """

    def __init__(self, cfg: ModelConfig, num_slots: int, max_rank: int, dtype: torch.dtype, device: torch.device):
        self.num_slots, self.max_rank, self.dtype, self.device = num_slots, max_rank, dtype, device
        shapes = module_shapes(cfg)
        self.parts = {m: len(parts) for m, parts in FUSED_PARTS.items()}
        self.outs = {m: shapes[m][1] for m in FUSED_PARTS}
        layers, sr = cfg.num_layers, num_slots * max_rank
        self.a = {m: torch.zeros(layers, shapes[m][0], p * sr, dtype=dtype, device=device) for m, p in self.parts.items()}
        self.b = {m: [torch.zeros(layers, sr, out, dtype=dtype, device=device) for out in self.outs[m]]
                  for m in FUSED_PARTS}

    def write(self, slot: int, blocks: AdapterBlocks) -> None:
        self._fill(slot, blocks)

    def clear(self, slot: int) -> None:
        self._fill(slot, None)

    def _fill(self, slot: int, blocks: Optional[AdapterBlocks]) -> None:
        r, sr = self.max_rank, self.num_slots * self.max_rank
        rows = slice(slot * r, (slot + 1) * r)
        for m, p in self.parts.items():
            start = 0
            for j, out in enumerate(self.outs[m]):
                a_cols = slice(j * sr + slot * r, j * sr + (slot + 1) * r)
                if blocks is None:
                    self.a[m][:, :, a_cols] = 0
                    self.b[m][j][:, rows, :] = 0
                else:
                    src = slice(j * r, (j + 1) * r)
                    self.a[m][:, :, a_cols] = blocks.a[m][:, :, src].to(self.device, self.dtype)
                    self.b[m][j][:, rows, :] = blocks.b[m][:, src, start:start + out].to(self.device, self.dtype)
                start += out

    def step(self, row_slots: Sequence[Optional[int]]) -> Optional[LoraStep]:
        """The step's view for tokens whose slots are ``row_slots`` (None: the base model);
        None when no token uses an adapter (the plain forward pass, at no extra cost)."""
        used = [(row, s) for row, s in enumerate(row_slots) if s is not None]
        if not used:
            return None
        r, sr = self.max_rank, self.num_slots * self.max_rank
        top = max(s for _, s in used) + 1  # B is cut to the slots up to the highest one used
        onehot = torch.zeros(len(row_slots), self.num_slots, dtype=self.dtype)
        rows, slots = zip(*used)
        onehot[list(rows), list(slots)] = 1
        per_part = onehot.repeat_interleave(r, dim=1).to(self.device)
        masks, b = {}, {}
        for m, p in self.parts.items():
            masks[m] = per_part if p == 1 else per_part.repeat(1, p)
            parts, start = [], 0
            for j, out in enumerate(self.outs[m]):
                parts.append((slice(j * sr, j * sr + top * r), slice(start, start + out), self.b[m][j][:, : top * r]))
                start += out
            b[m] = parts
        return LoraStep(self.a, b, masks)
