"""`fleetserve model make-tiny`: deterministic, loadable Hugging Face checkpoints."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from fleetserve.engine.model import tiny

CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _digests(path) -> dict[str, str]:
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in CHECKPOINT_FILES}


def test_same_arguments_give_same_bytes_across_processes(tmp_path, tiny_llama_gqa_path):
    # A fresh process retrains the tokenizer and redraws the weights from scratch.
    out = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "fleetserve", "model", "make-tiny", str(out), "--num-kv-heads", "2"],
        check=True, capture_output=True, timeout=300,
    )
    assert _digests(out) == _digests(tiny_llama_gqa_path)


def test_different_arguments_give_different_weights(tiny_llama_path, tiny_llama_gqa_path):
    a, b = _digests(tiny_llama_path), _digests(tiny_llama_gqa_path)
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["tokenizer.json"] == b["tokenizer.json"]


@pytest.mark.parametrize(
    "preset,low,high", [("tiny", 2e6, 6e6), ("small", 8e6, 30e6), ("100m", 95e6, 125e6)]
)
def test_preset_sizes(preset, low, high):
    config = tiny._hf_config(preset, "llama", None, tiny.VOCAB_SIZE)
    with torch.device("meta"):
        model = tiny._model_class("llama")(config)
    assert low <= sum(p.numel() for p in model.parameters()) <= high


def test_architectures_load_in_transformers(tiny_llama_path, tiny_llama_gqa_path, tiny_qwen2_path, tiny_mistral_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    expectations = {
        tiny_llama_path: ("llama", 6),
        tiny_llama_gqa_path: ("llama", 2),
        tiny_qwen2_path: ("qwen2", 2),
        tiny_mistral_path: ("mistral", 2),
    }
    for path, (model_type, kv_heads) in expectations.items():
        config = AutoConfig.from_pretrained(path)
        assert (config.model_type, config.num_key_value_heads) == (model_type, kv_heads)
        assert getattr(config, "sliding_window", None) is None
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            logits = model(torch.tensor([[1, 50, 60, 70]])).logits[0, -1]
        assert torch.isfinite(logits).all()
        # Scaled-up init: the greedy winner stands clear of the runner-up.
        top2 = logits.topk(2).values
        assert logits.std() > 1.0 and top2[0] > top2[1]
    qwen = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None
    assert qwen.lm_head.weight.data_ptr() == qwen.model.embed_tokens.weight.data_ptr()


def test_tokenizer_round_trip_and_special_tokens(tiny_llama_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    text = "def f(x):\n    return x + 1  # naïve ünïcödé ✓ 漢字\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    assert tok.eos_token == tiny.EOS and tok.bos_token == tiny.BOS and tok.pad_token == tiny.PAD
    config = json.loads((tiny_llama_path / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_token_id and config["vocab_size"] == len(tok)


def test_chat_template_renders_role_markers_as_single_tokens(tiny_llama_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n"
    ids = tok.encode(text, add_special_tokens=False)
    for marker in ("<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert tok.convert_tokens_to_ids(marker) in ids
