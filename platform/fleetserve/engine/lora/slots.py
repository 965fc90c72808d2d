"""Resident adapters of one runner, stacked so a step mixing adapters is two matmuls per module.

Every fused module keeps ``A`` of all slots side by side, ``[layers, in, S*P*R]``, and ``B``
stacked, ``[layers, S*P*R, out]``. A step computes ``h = x @ A`` for ALL slots at once, zeroes
each token's columns of the slots it does not use (a per-step mask from the tokens' slot
ids), and adds ``h @ B``: one batched low-rank update for base-model tokens and any mix of
adapters, no gathering of weights and no split of the batch per adapter. The waste is the
unused slots' columns, a few percent of the base matmul at ranks <= 16 (docs/lora.md).
The mask is cut to the highest slot the step uses, so single-adapter steps pay for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from fleetserve.engine.lora.peft_format import FUSED_PARTS, AdapterBlocks, module_shapes
from fleetserve.engine.model.config import ModelConfig


@dataclass
class LoraStep:
    """One step's view of the slots: per fused module, the used columns and the token mask."""

    a: dict[str, torch.Tensor]  # module -> [layers, in, cols]
    b: dict[str, torch.Tensor]  # module -> [layers, cols, out]
    masks: dict[str, torch.Tensor]  # module -> [tokens, cols]

    def add(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y += ((x @ A) * mask) @ B`` for this layer's ``module`` (in place; returns ``y``)."""
        h = torch.mm(x, self.a[module][layer]).mul_(self.masks[module])
        return y.addmm_(h, self.b[module][layer])


class LoraSlots:
    """``num_slots`` adapter slots of rank up to ``max_rank`` for the decoder of ``cfg``."""

    def __init__(self, cfg: ModelConfig, num_slots: int, max_rank: int, dtype: torch.dtype, device: torch.device):
        self.num_slots, self.max_rank, self.dtype, self.device = num_slots, max_rank, dtype, device
        self.width = {m: len(parts) * max_rank for m, parts in FUSED_PARTS.items()}
        shapes = module_shapes(cfg)
        layers = cfg.num_layers
        self.a = {m: torch.zeros(layers, shapes[m][0], num_slots * w, dtype=dtype, device=device)
                  for m, w in self.width.items()}
        self.b = {m: torch.zeros(layers, num_slots * w, sum(shapes[m][1]), dtype=dtype, device=device)
                  for m, w in self.width.items()}

    def _cols(self, module: str, slot: int) -> slice:
        w = self.width[module]
        return slice(slot * w, (slot + 1) * w)

    def write(self, slot: int, blocks: AdapterBlocks) -> None:
        for m in self.width:
            self.a[m][:, :, self._cols(m, slot)] = blocks.a[m].to(self.device, self.dtype)
            self.b[m][:, self._cols(m, slot), :] = blocks.b[m].to(self.device, self.dtype)

    def clear(self, slot: int) -> None:
        for m in self.width:
            self.a[m][:, :, self._cols(m, slot)] = 0
            self.b[m][:, self._cols(m, slot), :] = 0

    def step(self, row_slots: Sequence[Optional[int]]) -> Optional[LoraStep]:
        """The step's view for tokens whose slots are ``row_slots`` (None: the base model);
        None when no token uses an adapter (the plain forward pass, at no extra cost)."""
        used = [(row, s) for row, s in enumerate(row_slots) if s is not None]
        if not used:
            return None
        top = max(s for _, s in used) + 1
        onehot = torch.zeros(len(row_slots), top, dtype=self.dtype)
        rows, slots = zip(*used)
        onehot[list(rows), list(slots)] = 1
        masks, a, b = {}, {}, {}
        for m, w in self.width.items():
            masks[m] = onehot.repeat_interleave(w, dim=1).to(self.device)
            a[m] = self.a[m][:, :, : top * w]
            b[m] = self.b[m][:, : top * w]
        return LoraStep(a, b, masks)
