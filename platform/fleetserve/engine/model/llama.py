"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2) on a flat token batch.

Differences between the family members are configuration, not code: GQA is
``num_kv_heads < num_heads``, Qwen2 has q/k/v biases, small models tie the LM head to the
embedding. Weights are stored fused (q|k|v in one matrix, gate|up in another) so a layer
costs few kernel launches, and q/k rows are reordered so rotary is one complex multiply;
:mod:`fleetserve.engine.model.loader` does both at load time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from fleetserve.engine.model.attention import AttentionMetadata, paged_attention
from fleetserve.engine.model.config import ModelConfig
from fleetserve.engine.model.layers import RMSNorm, SwiGLU, apply_rotary

if TYPE_CHECKING:
    from fleetserve.engine.lora.slots import LoraStep


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_bias)

    def forward(self, x: torch.Tensor, rot: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                lora: Optional["LoraStep"] = None) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv(x)
        if lora is not None:
            lora.add(self.layer_index, "qkv", x, qkv)
        # Rotate q and k together: one complex multiply per layer.
        qk = apply_rotary(qkv[:, : self.q_size + self.kv_size].view(t, -1, self.head_dim), rot)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        v = qkv[:, self.q_size + self.kv_size :].view(t, self.num_kv_heads, self.head_dim)
        attn = paged_attention(q, k, v, kv_cache, meta)
        out = self.o(attn)
        return out if lora is None else lora.add(self.layer_index, "o", attn, out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer_index)
        self.norm_mlp = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, layer_index)

    def forward(self, x, rot, kv_cache, meta, lora=None):
        x = x + self.attn(self.norm_attn(x), rot, kv_cache, meta, lora)
        return x + self.mlp(self.norm_mlp(x), lora)

    def attention_half(self, x, rot, kv_cache, meta, lora=None):
        """``forward`` is ``mlp_half(attention_half(x, ...))``; the engine may run another
        forward pass in between (the attention has written this step's K/V already)."""
        return x + self.attn(self.norm_attn(x), rot, kv_cache, meta, lora)

    def mlp_half(self, x, lora=None):
        return x + self.mlp(self.norm_mlp(x), lora)


class LlamaForCausalLM(nn.Module):
    """Decoder stack plus LM head. ``forward`` returns final hidden states ``[T, hidden]``;
    ``logits`` applies the head to the few rows whose next token is wanted."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # With tied embeddings, optionally a faster copy of the head (see cpu_linear).
        self.tied_head: Optional[nn.Module] = None

    def forward(
        self,
        token_ids: torch.Tensor,
        rot: torch.Tensor,
        kv_caches: torch.Tensor,
        meta: AttentionMetadata,
        between_layers: Optional[Callable[[], None]] = None,
        lora: Optional["LoraStep"] = None,
    ) -> torch.Tensor:
        """``token_ids [T]``, per-token complex rotations ``rot [T, 1, head_dim // 2]``,
        ``kv_caches [layers, 2, kv_heads, num_blocks, block_size, head_dim]``.
        ``between_layers`` is called after every layer's attention and after every layer
        but the last (the engine may run another, smaller forward pass there: layers keep
        no state between calls, which is why ``lora``, the step's adapter view, is an
        argument and never module state)."""
        x = self.embed(token_ids)
        if between_layers is None:
            for layer, kv_cache in zip(self.layers, kv_caches):
                x = layer(x, rot, kv_cache, meta, lora)
            return x
        last = len(self.layers) - 1
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            x = layer.attention_half(x, rot, kv_cache, meta, lora)
            between_layers()  # also between a layer's attention and its MLP: half the wait
            x = layer.mlp_half(x, lora)
            if i < last:
                between_layers()
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        if self.tied_head is not None:
            return self.tied_head(hidden).float()
        return torch.nn.functional.linear(hidden, self.embed.weight).float()
