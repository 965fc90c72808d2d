"""Deterministic tiny Llama-family checkpoints, made offline.

``make_tiny_checkpoint(dir, preset, arch)`` writes a Hugging Face-format checkpoint
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a chat
template, generation_config.json). Same arguments on the same Python install give the
same bytes: the weights come from a seeded generator and the byte-level BPE tokenizer is
trained on a sorted, bounded subset of the standard library's own sources.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PRESETS = ("tiny", "small", "100m")
ARCHS = ("llama", "qwen2", "mistral")

# Role markers are special tokens so a rendered chat prompt tokenizes them atomically.
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, "<|system|>", "<|user|>", "<|assistant|>")
# Plain conversations render exactly as before tools were added. With ``tools`` the
# template writes a Hermes/Qwen-style tool section (one JSON schema per line inside
# <tools>), an assistant turn's tool_calls as <tool_call>{"name", "arguments"}</tool_call>
# lines, and a tool result as a user turn holding <tool_response>: the format the
# ``hermes`` tool-call parser reads back (fleetserve.api.tool_calls).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\n# Tools\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "</tools>\nTo call a function, write <tool_call>{\"name\": <name>, \"arguments\": <object>}</tool_call><|end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<|user|>\n<tool_response>\n{{ message['content'] }}\n</tool_response><|end|>\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "<tool_call>{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}</tool_call>"
    "{% endfor %}"
    "<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

VOCAB_SIZE = 6144
MAX_POSITIONS = 2048
# Bounded training corpus: enough text for every merge, small enough to train in seconds.
CORPUS_MAX_BYTES = 1_500_000
# Random init is scaled up (HF's default is 0.02) so logits are peaked: greedy decoding
# then has clear winners and comparisons against transformers are robust to fp noise.
INIT_STD = 0.25
SEED = 1234


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    gqa_kv_heads: int  # KV heads used by the GQA architectures (qwen2, mistral)


PRESET_SHAPES = {
    "tiny": Preset(hidden_size=192, num_layers=4, num_heads=6, intermediate_size=384, gqa_kv_heads=2),
    "small": Preset(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024, gqa_kv_heads=2),
    "100m": Preset(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2560, gqa_kv_heads=4),
}


def _corpus_files() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files, total = [], 0
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        size = os.path.getsize(path)
        if total + size > CORPUS_MAX_BYTES:
            continue
        files.append(path)
        total += size
    if not files:
        raise RuntimeError(f"no *.py sources found under {stdlib} to train the tokenizer on")
    return files


@functools.lru_cache(maxsize=4)
def train_tokenizer_json(vocab_size: int = VOCAB_SIZE) -> str:
    """Train a byte-level BPE on the standard library's sources; return tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts():
        for path in _corpus_files():
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()

    tok.train_from_iterator(texts(), trainer=trainer)
    return tok.to_str(pretty=True)


def _hf_config(preset: str, arch: str, num_kv_heads: Optional[int], vocab_size: int):
    shape = PRESET_SHAPES[preset]
    if num_kv_heads is None:
        num_kv_heads = shape.num_heads if arch == "llama" else shape.gqa_kv_heads
    if shape.num_heads % num_kv_heads:
        raise ValueError(f"--num-kv-heads {num_kv_heads} must divide num_heads {shape.num_heads}")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        initializer_range=INIT_STD,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        dtype="float32",
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if arch == "qwen2":
        from transformers import Qwen2Config

        # Qwen2's small models tie embeddings; this exercises the tied path.
        return Qwen2Config(
            **common, tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if arch == "mistral":
        from transformers import MistralConfig

        # No sliding window: attention over the whole context, as the engine computes it.
        return MistralConfig(
            **common, tie_word_embeddings=False, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def _model_class(arch: str):
    import transformers

    return {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "mistral": transformers.MistralForCausalLM,
    }[arch]


def _random_state_dict(model, tie: bool) -> dict:
    """Seeded weights, independent of transformers' own init order."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    state = {}
    for name, param in sorted(model.state_dict().items()):
        if tie and name == "lm_head.weight":
            continue
        if name.endswith("norm.weight"):
            # Around 1, not exactly 1, so a loader that skips norms would be caught.
            value = 1.0 + 0.1 * torch.randn(param.shape, generator=gen)
        else:
            value = INIT_STD * torch.randn(param.shape, generator=gen)
        state[name] = value.to(torch.float32).contiguous()
    return state


def _tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_tiny_checkpoint(
    out_dir: str | os.PathLike,
    preset: str = "tiny",
    arch: str = "llama",
    num_kv_heads: Optional[int] = None,
) -> Path:
    """Write a deterministic checkpoint into ``out_dir`` (created if missing); return its path."""
    import torch
    from safetensors.torch import save_file

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer_json = train_tokenizer_json(VOCAB_SIZE)
    vocab_size = len(json.loads(tokenizer_json)["model"]["vocab"])
    config = _hf_config(preset, arch, num_kv_heads, vocab_size)
    # Build on the meta device: only the parameter names and shapes are needed.
    with torch.device("meta"):
        model = _model_class(arch)(config)
    state = _random_state_dict(model, tie=config.tie_word_embeddings)

    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict["architectures"] = [_model_class(arch).__name__]
    _write_json(out / "config.json", config_dict)
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id},
    )
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    _write_json(out / "tokenizer_config.json", _tokenizer_config())
    return out


def count_parameters(path: str | os.PathLike) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
