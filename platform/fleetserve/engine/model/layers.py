"""Building blocks of the Llama-family decoder: RMSNorm, SwiGLU MLP, rotary embeddings.

Numerics follow transformers' reference implementations (same inverse-frequency formulas,
cos/sin computed in float32), so logits agree with Hugging Face to float rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fleetserve.engine.model.config import RopeConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.shape = (hidden_size,)
        # Optional one-pass ``(x, weight, eps) -> normed`` (cpu_kernels.rms_norm_kernel).
        self.kernel: Optional[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and x.dim() == 2:
            return self.kernel(x, self.weight, self.eps)
        return F.rms_norm(x, self.shape, self.weight, self.eps)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, layer_index: int = 0):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.layer_index = layer_index  # which LoRA weights apply (LoraStep.add)
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=bias)
        # Optional fused ``[T, 2I] -> silu(gate) * up`` (cpu_kernels.silu_and_mul_kernel).
        self.silu_and_mul: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def forward(self, x: torch.Tensor, lora=None) -> torch.Tensor:
        """``lora``: the step's :class:`fleetserve.engine.lora.slots.LoraStep`, or None."""
        gate_up = self.gate_up(x)
        if lora is not None:
            lora.add(self.layer_index, "gate_up", x, gate_up)
        if self.silu_and_mul is not None and gate_up.dim() == 2:
            h = self.silu_and_mul(gate_up)
        else:
            gate, up = gate_up.split(self.intermediate_size, dim=-1)
            h = F.silu(gate) * up
        out = self.down(h)
        return out if lora is None else lora.add(self.layer_index, "down", h, out)


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))


def _llama3_inv_freq(rope: RopeConfig, dim: int) -> torch.Tensor:
    inv_freq = _base_inv_freq(rope.theta, dim)
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old_len = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(rope: RopeConfig, dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    base, original = rope.theta, rope.original_max_position_embeddings
    factor = rope.factor if rope.factor is not None else max_position_embeddings / original

    def mscale_of(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = float(mscale_of(factor, rope.mscale) / mscale_of(factor, rope.mscale_all_dim))
        else:
            attention_factor = mscale_of(factor)
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero, as the reference does
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def _dynamic_inv_freq(rope: RopeConfig, dim: int, seq_len: int) -> torch.Tensor:
    original = rope.original_max_position_embeddings
    seq_len = max(seq_len, original)
    base = rope.theta * ((rope.factor * seq_len / original) - (rope.factor - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(base, dim)


def rotary_tables(
    rope: RopeConfig, head_dim: int, max_positions: int, max_position_embeddings: int
) -> torch.Tensor:
    """Complex64 rotations ``[max_positions, head_dim // 2]`` (``attention_factor * e^{i*theta}``).

    Dynamic NTK depends on the sequence length in transformers (it rescales once the longest
    position seen exceeds the original context). A paged cache stores keys rotated when
    they were written, so here each position ``p`` uses the frequencies for a sequence of
    length ``max(p + 1, original)``: identical to transformers inside the original context.
    """
    positions = torch.arange(max_positions, dtype=torch.float32)
    scale = 1.0
    if rope.rope_type == "dynamic":
        original = rope.original_max_position_embeddings
        freqs = torch.outer(positions, _base_inv_freq(rope.theta, head_dim))
        for p in range(original, max_positions):
            freqs[p] = positions[p] * _dynamic_inv_freq(rope, head_dim, p + 1)
    else:
        if rope.rope_type == "default":
            inv_freq = _base_inv_freq(rope.theta, head_dim)
        elif rope.rope_type == "linear":
            inv_freq = _base_inv_freq(rope.theta, head_dim) / rope.factor
        elif rope.rope_type == "llama3":
            inv_freq = _llama3_inv_freq(rope, head_dim)
        elif rope.rope_type == "yarn":
            inv_freq, scale = _yarn_inv_freq(rope, head_dim, max_position_embeddings)
        else:
            raise ValueError(f"unsupported rope_type {rope.rope_type!r}")
        freqs = torch.outer(positions, inv_freq)
    return torch.complex(freqs.cos() * scale, freqs.sin() * scale)


def interleave_rotary_rows(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder each head's q/k output rows from rotate-half layout (``x_i`` pairs with
    ``x_{i+d/2}``) to interleaved pairs, so rotation is one complex multiply.

    Applied to both q and k it leaves every ``q . k`` unchanged (same permutation of the
    summed dimension); v and the attention output are untouched.
    """
    half = head_dim // 2
    perm = torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).flatten()
    shaped = weight.view(num_heads, head_dim, *weight.shape[1:])
    return shaped[:, perm].reshape(weight.shape).contiguous()


def apply_rotary(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, heads, head_dim]`` (interleaved pairs) by per-token complex ``rot [T, 1, head_dim // 2]``."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)
