"""Read a PEFT-format LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
into the decoder's fused layout.

The decoder fuses q|k|v and gate|up into single matrices (:mod:`fleetserve.engine.model.llama`),
so an adapter's per-projection ``A [r, in]`` / ``B [out, r]`` pairs are packed per fused module:
part ``j`` of a module with ``P`` parts owns rank columns ``j*R .. j*R + r`` (``R`` = the
engine's ``max_lora_rank``) and only its own output rows of ``B``, which makes the fused ``B``
block-diagonal. ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) is folded into ``B``; q and
k rows of ``B`` get the same rotary row order the loader gives the base weights.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from fleetserve.engine.model.config import ModelConfig
from fleetserve.engine.model.layers import interleave_rotary_rows
from fleetserve.errors import ConfigError

# fused module -> the HF projections it holds, in row order
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
_PROJ = {p: (m, j) for m, parts in FUSED_PARTS.items() for j, p in enumerate(parts)}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$")
# Fields whose non-default values change the math in ways this engine does not compute.
_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "modules_to_save": None, "bias": "none"}


@dataclass(frozen=True)
class AdapterBlocks:
    """One adapter in the decoder's layout: ``a[module]`` is ``[layers, in, P*R]`` and
    ``b[module]`` ``[layers, P*R, out]`` (transposed, so a step's matmuls read rows)."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    rank: int


def module_shapes(cfg: ModelConfig) -> dict[str, tuple[int, list[int]]]:
    """fused module -> (in features, out features of each part)."""
    q, kv, h, i = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    return {"qkv": (h, [q, kv, kv]), "o": (q, [h]), "gate_up": (h, [i, i]), "down": (i, [h])}


def read_adapter_config(path: Path) -> dict:
    try:
        conf = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path / 'adapter_config.json'}: {exc}", field="path") from exc
    if conf.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{path}: peft_type {conf.get('peft_type')!r} is not LORA", field="path")
    for key, default in _UNSUPPORTED.items():
        if conf.get(key, default) not in (default, [], {}):
            raise ConfigError(f"{path}: {key}={conf[key]!r} is not supported", field=key)
    for key in ("rank_pattern", "alpha_pattern"):
        if conf.get(key):
            raise ConfigError(f"{path}: per-module {key} is not supported", field=key)
    return conf


def _read_pairs(path: Path) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    files = sorted(path.glob("adapter_model*.safetensors"))
    if not files:
        raise ConfigError(f"no adapter_model.safetensors in {path}", field="path")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                m = _KEY.search(key)
                if m is None:
                    raise ConfigError(f"{file.name}: tensor {key!r} is not a LoRA weight of a supported module",
                                      field="target_modules")
                if m.group(2) not in _PROJ:
                    raise ConfigError(f"{file.name}: target module {m.group(2)!r} is not supported", field="target_modules")
                pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = f.get_tensor(key)
    return pairs


def load_adapter(path: str | Path, cfg: ModelConfig, max_rank: int, dtype: torch.dtype = torch.float32) -> AdapterBlocks:
    """The adapter at ``path`` in the layout of :class:`AdapterBlocks` (raises ConfigError
    naming what does not fit the base model or the engine's limits)."""
    path = Path(path)
    conf = read_adapter_config(path)
    alpha = float(conf.get("lora_alpha", 8))
    shapes = module_shapes(cfg)
    a = {m: torch.zeros(cfg.num_layers, shapes[m][0], len(FUSED_PARTS[m]) * max_rank) for m in FUSED_PARTS}
    b = {m: torch.zeros(cfg.num_layers, len(FUSED_PARTS[m]) * max_rank, sum(shapes[m][1])) for m in FUSED_PARTS}
    rank = 0
    for (layer, proj), ab in _read_pairs(path).items():
        module, part = _PROJ[proj]
        if set(ab) != {"A", "B"} or layer >= cfg.num_layers:
            raise ConfigError(f"{path}: layer {layer} {proj} needs lora_A and lora_B of a layer the model has", field="path")
        lora_a, lora_b = ab["A"].float(), ab["B"].float()
        r = lora_a.shape[0]
        in_f, outs = shapes[module]
        if r > max_rank:
            raise ConfigError(f"{path}: rank {r} exceeds max_lora_rank {max_rank}", field="max_lora_rank")
        if lora_a.shape != (r, in_f) or lora_b.shape != (outs[part], r):
            raise ConfigError(f"{path}: {proj} has shapes {tuple(lora_a.shape)}/{tuple(lora_b.shape)}, "
                              f"the base model needs ({r}, {in_f})/({outs[part]}, {r})", field="path")
        scale = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
        if proj in ("q_proj", "k_proj"):
            heads = cfg.num_heads if proj == "q_proj" else cfg.num_kv_heads
            lora_b = interleave_rotary_rows(lora_b, heads, cfg.head_dim)
        col, row = part * max_rank, sum(outs[:part])
        a[module][layer, :, col:col + r] = lora_a.t()
        b[module][layer, col:col + r, row:row + outs[part]] = (lora_b * scale).t()
        rank = max(rank, r)
    return AdapterBlocks({m: t.to(dtype) for m, t in a.items()}, {m: t.to(dtype) for m, t in b.items()}, rank)
