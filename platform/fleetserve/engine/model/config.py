"""Map a Hugging Face ``config.json`` onto fleetserve's own model description.

Only the Llama family is supported (Llama 2/3, Mistral, Qwen2): decoder-only, RMSNorm,
SwiGLU, rotary positions, grouped-query attention. Anything the decoder cannot compute
exactly (sliding windows shorter than the context, partial rotary) is refused here, at
load time, instead of silently producing different numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fleetserve.errors import ConfigError

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})
ROPE_TYPES = frozenset({"default", "linear", "dynamic", "llama3", "yarn"})


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters (the union of the scaling variants' fields)."""

    rope_type: str = "default"
    theta: float = 10000.0
    factor: Optional[float] = None
    original_max_position_embeddings: Optional[int] = None
    # llama3
    low_freq_factor: Optional[float] = None
    high_freq_factor: Optional[float] = None
    # yarn
    beta_fast: Optional[float] = None
    beta_slow: Optional[float] = None
    attention_factor: Optional[float] = None
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    truncate: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """What the decoder needs to know about a checkpoint."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    bos_token_id: Optional[int]
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def _as_int_list(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_from_hf(hf: dict) -> RopeConfig:
    # transformers 5 writes "rope_parameters" (theta inside); older checkpoints write
    # "rope_scaling" (with "type" or "rope_type") next to a top-level "rope_theta".
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_parameters.rope_type {rope_type!r} is not supported (one of {sorted(ROPE_TYPES)})")
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported by the Llama-family decoder")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    original = params.get("original_max_position_embeddings")
    if rope_type in ("dynamic", "yarn") and original is None:
        original = hf.get("max_position_embeddings")
    if rope_type in ("linear", "dynamic", "llama3") and params.get("factor") is None:
        raise ConfigError(f"rope_parameters.factor is required for rope_type {rope_type!r}")
    return RopeConfig(
        rope_type=rope_type,
        theta=float(theta),
        factor=None if params.get("factor") is None else float(params["factor"]),
        original_max_position_embeddings=None if original is None else int(original),
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def model_config_from_hf(hf: dict, generation_config: Optional[dict] = None) -> ModelConfig:
    """Translate a parsed ``config.json`` (plus optional ``generation_config.json``)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not supported (one of {sorted(SUPPORTED_MODEL_TYPES)})")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf.get('hidden_act')!r} is not supported (SwiGLU needs 'silu')")
    num_heads = int(hf["num_attention_heads"])
    num_kv_heads = int(hf.get("num_key_value_heads") or num_heads)
    hidden = int(hf["hidden_size"])
    max_pos = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    window_used = model_type == "mistral" or (model_type == "qwen2" and hf.get("use_sliding_window"))
    if window_used and window is not None and int(window) < max_pos:
        raise ConfigError(
            f"sliding_window={window} is shorter than max_position_embeddings={max_pos}; sliding-window attention is not supported"
        )
    eos = _as_int_list((generation_config or {}).get("eos_token_id")) or _as_int_list(hf.get("eos_token_id"))
    return ModelConfig(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=int(hf.get("head_dim") or hidden // num_heads),
        max_position_embeddings=max_pos,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope=_rope_from_hf(hf),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama and Mistral declare them with attention_bias.
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        o_bias=model_type != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos,
    )


def load_model_config(model_dir: str | Path) -> ModelConfig:
    """Read ``config.json`` (and ``generation_config.json`` when present) from a checkpoint dir."""
    path = Path(model_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model: no config.json in {path}")
    hf = json.loads(config_file.read_text(encoding="utf-8"))
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else None
    return model_config_from_hf(hf, gen)
