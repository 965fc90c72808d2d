"""Linear layers on CPU through oneDNN with weights reordered once, at load time.

``F.linear`` on CPU calls MKL's sgemm on the plain ``[out, in]`` weight, which re-packs
the weight into its blocked layout on every call; at decode batch sizes (M = 1..64 rows)
that repacking and MKL's generic dispatch cost about as much as the arithmetic. oneDNN's
linear on a weight already reordered into its own blocked layout (the path vLLM-CPU
takes too) measured 1.6-2x faster at M = 16..64 and ~15% faster at M = 2048 here (fp32,
2 threads, AVX-512). Results differ from ``F.linear`` only by float summation order.

The reordered weight replaces the plain one (no second copy in memory). If oneDNN is
unavailable, or ``FLEETSERVE_CPU_KERNELS=0``, the plain modules stay as they are.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

# Row count oneDNN tunes the reordered layout for; the layer still runs any row count.
# Mid-size decode batches are where the packed layout gains most.
BATCH_HINT = 64

# Row counts oneDNN sees. oneDNN builds (and keeps) a primitive for every input shape it is
# called with, about 0.6 MB of resident memory each, and that memory stays after its
# primitive cache evicts the entry (measured with torch 2.13: 512 distinct row counts on
# one 768x256 weight grew RSS by 310 MB; 3000 calls cycling 16 row counts, by 8 MB once).
# A step's row count is its number of tokens, which keeps taking new values for as long as
# a server runs: the soak's engine process grew 2.6 MiB a minute for 30 minutes. So inputs
# are padded to a fixed set of row counts: exact up to EXACT_ROWS (decode batches), then
# multiples of ROW_STEP up to CHUNK_ROWS; longer inputs (prefill) run as CHUNK_ROWS-row
# blocks. That is EXACT_ROWS + (CHUNK_ROWS - EXACT_ROWS) / ROW_STEP = 31 shapes per weight
# shape, built once (``warm_row_buckets`` at load). Padding wastes at most ROW_STEP - 1
# rows of a call, where the weight read dominates anyway.
EXACT_ROWS = 16
ROW_STEP = 16
CHUNK_ROWS = 256


def row_bucket(rows: int) -> int:
    """The row count a call with ``rows`` rows (1..CHUNK_ROWS) runs at."""
    return rows if rows <= EXACT_ROWS else -(-rows // ROW_STEP) * ROW_STEP


def row_buckets(max_rows: int) -> list[int]:
    """Every row count calls of up to ``max_rows`` rows run at."""
    top = min(max_rows, CHUNK_ROWS)
    return sorted({row_bucket(m) for m in range(1, top + 1)} | ({CHUNK_ROWS} if max_rows > CHUNK_ROWS else set()))


class PackedLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` held in oneDNN's blocked layout."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        # A plain attribute, not a Parameter: an opaque oneDNN tensor has no strides, so
        # state_dict/copy machinery must not touch it.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        m = rows.shape[0]
        if m <= CHUNK_ROWS:
            out = self._rows(rows)
        else:
            out = torch.cat([self._rows(rows[i:i + CHUNK_ROWS]) for i in range(0, m, CHUNK_ROWS)])
        return out.reshape(*x.shape[:-1], self.out_features)

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        """At most CHUNK_ROWS rows, padded with zeros to their row bucket."""
        m = rows.shape[0]
        b = row_bucket(m)
        if b != m:
            rows = torch.cat([rows, rows.new_zeros(b - m, rows.shape[1])])
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y if b == m else y[:m]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packed_linear_available(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or dtype != torch.float32:
        return False
    if os.environ.get("FLEETSERVE_CPU_KERNELS", "1") == "0":
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack_linear_layers(model: nn.Module) -> int:
    """Swap every ``nn.Linear`` inside ``model`` for a :class:`PackedLinear` (in place).

    Returns how many were swapped; 0 when a probe call fails (the plain path stays).
    """
    try:
        probe = PackedLinear(torch.ones(4, 8), None)
        if not torch.allclose(probe(torch.ones(3, 8)), torch.full((3, 4), 8.0)):
            raise RuntimeError("oneDNN linear probe returned wrong values")
    except Exception as exc:  # noqa: BLE001 - an exotic build: the plain path still works
        log.warning("oneDNN packed linear unavailable, using F.linear: %s", exc)
        return 0
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedLinear(module.weight, module.bias))
    if getattr(model, "lm_head", False) is None and hasattr(model, "tied_head"):
        # A tied head gets its own packed copy of the embedding (the lookup needs the plain
        # rows): vocab x hidden more floats, for what is the largest single matmul of a
        # decode step on small models.
        model.tied_head = PackedLinear(model.embed.weight, None)
        targets.append(("tied_head", None))
    return len(targets)


def warm_row_buckets(model: nn.Module, max_rows: int) -> int:
    """Build oneDNN's primitive for every row bucket of every distinct packed weight shape
    now, so that a server's memory does not grow while traffic visits new step sizes.
    Returns the number of calls made."""
    seen, calls = set(), 0
    with torch.inference_mode():
        for module in model.modules():
            if not isinstance(module, PackedLinear):
                continue
            key = (module.in_features, module.out_features, module.bias is not None)
            if key in seen:
                continue
            seen.add(key)
            for rows in row_buckets(max_rows):
                module(torch.zeros(rows, module.in_features))
                calls += 1
    return calls

