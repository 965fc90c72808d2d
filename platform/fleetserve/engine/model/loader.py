"""Load a local Hugging Face safetensors checkpoint into :class:`LlamaForCausalLM`.

Handles single-file and sharded (``model.safetensors.index.json``) checkpoints, and fuses
q/k/v and gate/up projections into the decoder's combined matrices as tensors are read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from fleetserve.engine.model.config import ModelConfig, load_model_config
from fleetserve.engine.model.layers import interleave_rotary_rows
from fleetserve.engine.model.llama import LlamaForCausalLM
from fleetserve.errors import ConfigError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# HF name inside a layer -> (our name, position within a fused matrix or None)
_LAYER_MAP = {
    "self_attn.q_proj": ("attn.qkv", 0),
    "self_attn.k_proj": ("attn.qkv", 1),
    "self_attn.v_proj": ("attn.qkv", 2),
    "self_attn.o_proj": ("attn.o", None),
    "mlp.gate_proj": ("mlp.gate_up", 0),
    "mlp.up_proj": ("mlp.gate_up", 1),
    "mlp.down_proj": ("mlp.down", None),
    "input_layernorm": ("norm_attn", None),
    "post_attention_layernorm": ("norm_mlp", None),
}
_TOP_MAP = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}
_FUSED_PARTS = {"attn.qkv": 3, "mlp.gate_up": 2}


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors files in {model_dir}", field="model")
    return files


def _iter_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def _our_name(hf_name: str) -> tuple[str, int | None] | None:
    stem, _, kind = hf_name.rpartition(".")  # kind: weight | bias
    m = _LAYER.match(stem)
    if m:
        mapped = _LAYER_MAP.get(m.group(2))
        if mapped is None:
            return None
        return f"layers.{m.group(1)}.{mapped[0]}.{kind}", mapped[1]
    if stem in _TOP_MAP:
        return f"{_TOP_MAP[stem]}.{kind}", None
    return None


def load_model(
    model_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the decoder for ``model_dir`` and fill it with the checkpoint's weights."""
    path = Path(model_dir)
    cfg = load_model_config(path)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    expected = set(model.state_dict().keys())

    state: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for hf_name, tensor in _iter_tensors(path):
        mapped = _our_name(hf_name)
        if mapped is None:
            continue  # e.g. rotary inv_freq buffers some checkpoints carry
        name, part = mapped
        if name not in expected:
            continue  # lm_head.weight in a tied checkpoint
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            if part in (0, 1):
                heads = cfg.num_heads if part == 0 else cfg.num_kv_heads
                tensor = interleave_rotary_rows(tensor, heads, cfg.head_dim)
        tensor = tensor.to(device=device, dtype=dtype)
        if part is None:
            state[name] = tensor
        else:
            parts.setdefault(name, {})[part] = tensor
    for name, pieces in parts.items():
        fused = name.rsplit(".", 1)[0].split(".", 2)[2]
        if len(pieces) != _FUSED_PARTS[fused]:
            raise ConfigError(f"checkpoint is missing parts of {name}", field="model")
        state[name] = torch.cat([pieces[i] for i in sorted(pieces)], dim=0)
    missing = expected - state.keys()
    if missing:
        raise ConfigError(f"checkpoint {path} is missing tensors: {sorted(missing)[:5]}", field="model")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return model, cfg
