"""ModelRunner logits against Hugging Face transformers on the same checkpoints.

Every case runs the paged runner with scattered, non-contiguous block tables and compares
the logits of the tokens it returns with one full-sequence transformers forward pass.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fleetserve.engine.model.runner import ModelRunner
from fleetserve.engine.core.runner_types import ModelInput, SeqBatchItem
from fleetserve.errors import ConfigError, EngineError

ATOL = 2e-3  # logits are O(10); fp32 reorderings differ by ~1e-4
CHECKPOINTS = ("tiny_llama_path", "tiny_llama_gqa_path", "tiny_qwen2_path", "tiny_mistral_path")
BLOCK_SIZE = 4  # small blocks: every case crosses many block boundaries


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/fixtures/checkpoints.py


def hf_logits(path, token_ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]


def make_runner(path, num_blocks: int = 64, num_host_blocks: int = 8, **overrides) -> ModelRunner:
    runner = ModelRunner(str(path), block_size=BLOCK_SIZE, **overrides)
    runner.allocate_kv_cache(num_blocks, num_host_blocks=num_host_blocks)
    return runner


def seq(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 6000, (n,), generator=g).tolist()


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert int(ours.argmax()) == int(ref.argmax())


@pytest.fixture(params=CHECKPOINTS)
def checkpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["torch_attention", "cpu_kernel"])
def use_cpu_kernels(request) -> bool:
    """Both decode-attention paths: pure PyTorch, and the C++ kernel where it builds."""
    if request.param == "cpu_kernel":
        from fleetserve.engine.model.cpu_kernels import paged_decode_kernel

        if paged_decode_kernel() is None:
            pytest.skip("C++ kernel could not be built here (no compiler/ninja); the PyTorch path is tested")
        return True
    return False


def test_prefill_chunks_and_decodes_match_transformers(checkpoint, use_cpu_kernels):
    ids = seq(23, seed=1)
    ref = hf_logits(checkpoint, ids)
    runner = make_runner(checkpoint, use_cpu_kernels=use_cpu_kernels)
    table = [17, 3, 40, 9, 22, 5, 31]  # scattered blocks

    # Full prefill of the first 9 tokens in one item.
    out = runner.execute(ModelInput([SeqBatchItem(ids[:9], 0, table)]))
    assert out.shape == (1, runner.vocab_size)
    assert_close(out[0], ref[8])
    # Chunked continuation crossing block boundaries (9..13, 14..18), then decodes.
    for start, end in ((9, 14), (14, 19)):
        out = runner.execute(ModelInput([SeqBatchItem(ids[start:end], start, table)]))
        assert_close(out[0], ref[end - 1])
    for pos in range(19, 23):
        out = runner.execute(ModelInput([SeqBatchItem([ids[pos]], pos, table)]))
        assert_close(out[0], ref[pos])


def test_mixed_batch_of_prefill_chunks_and_decodes(checkpoint, use_cpu_kernels):
    a, b, c, d = seq(20, 2), seq(13, 3), seq(11, 4), seq(16, 5)
    refs = {name: hf_logits(checkpoint, s) for name, s in zip("abcd", (a, b, c, d))}
    runner = make_runner(checkpoint, use_cpu_kernels=use_cpu_kernels)
    tables = {"a": [50, 2, 33, 8, 61], "b": [7, 44, 19, 1], "c": [12, 58, 27], "d": [36, 0, 63, 25]}
    # Warm-up step: a and b get their first tokens cached.
    runner.execute(ModelInput([SeqBatchItem(a[:10], 0, tables["a"]), SeqBatchItem(b[:12], 0, tables["b"])]))
    out = runner.execute(
        ModelInput(
            [
                SeqBatchItem(a[10:17], 10, tables["a"]),  # prefill chunk on top of cached context
                SeqBatchItem([b[12]], 12, tables["b"]),  # decode
                SeqBatchItem(c, 0, tables["c"]),  # fresh full prefill
                SeqBatchItem(d[:6], 0, tables["d"], needs_logits=False),  # middle of a prefill
            ]
        )
    )
    assert out.shape == (3, runner.vocab_size)
    assert_close(out[0], refs["a"][16])
    assert_close(out[1], refs["b"][12])
    assert_close(out[2], refs["c"][10])
    # Next step: decodes of different lengths batched together, plus d's last chunk.
    out = runner.execute(
        ModelInput(
            [
                SeqBatchItem(d[6:16], 6, tables["d"]),
                SeqBatchItem([a[17]], 17, tables["a"]),
            ]
        )
    )
    assert_close(out[0], refs["d"][15])
    assert_close(out[1], refs["a"][17])
    out = runner.execute(ModelInput([SeqBatchItem([a[18]], 18, tables["a"]), SeqBatchItem([d[15]], 15, tables["d"])]))
    # d[15] was already computed; recomputing a position overwrites its slot with the same K/V.
    assert_close(out[0], refs["a"][18])
    assert_close(out[1], refs["d"][15])


@pytest.mark.parametrize("path_name", ["tiny_llama_path", "tiny_llama_gqa_path"])
def test_many_decodes_of_different_lengths_in_one_step(path_name, use_cpu_kernels, request):
    # Contexts from 2 to 60 tokens: the PyTorch path splits them into several padded
    # groups; the kernel reads each exact length through its block table.
    lengths = [2, 60, 7, 33, 15, 48, 3, 24, 9, 40]
    seqs = [seq(n + 1, 20 + i) for i, n in enumerate(lengths)]
    path = request.getfixturevalue(path_name)
    runner = make_runner(path, num_blocks=256, use_cpu_kernels=use_cpu_kernels)
    tables = [list(range(16 * i + 15, 16 * i - 1, -1)) for i in range(len(seqs))]  # reversed blocks
    runner.execute(ModelInput([SeqBatchItem(s[:-1], 0, t, needs_logits=False) for s, t in zip(seqs, tables)]))
    step = runner._builder.build([SeqBatchItem([s[-1]], len(s) - 1, t) for s, t in zip(seqs, tables)])
    if use_cpu_kernels:
        assert [g.tables is not None for g in step.meta.decode_groups] == [True]
    else:
        assert len(step.meta.decode_groups) > 1
    out = runner.execute(ModelInput([SeqBatchItem([s[-1]], len(s) - 1, t) for s, t in zip(seqs, tables)]))
    for i, s in enumerate(seqs):
        assert_close(out[i], hf_logits(path, s)[-1])


def test_swap_out_and_in_round_trip(tiny_llama_gqa_path):
    ids = seq(14, 6)
    ref = hf_logits(tiny_llama_gqa_path, ids)
    runner = make_runner(tiny_llama_gqa_path)
    runner.execute(ModelInput([SeqBatchItem(ids[:12], 0, [3, 9, 27])]))
    runner.swap_out([(3, 0), (9, 5), (27, 2)])
    # Another request overwrites those device blocks meanwhile.
    runner.execute(ModelInput([SeqBatchItem(seq(12, 7), 0, [27, 3, 9])]))
    runner.swap_in([(0, 40), (5, 11), (2, 6)])
    out = runner.execute(ModelInput([SeqBatchItem(ids[12:14], 12, [40, 11, 6, 50])]))
    assert_close(out[0], ref[13])


def test_release_and_reallocate_kv_cache(tiny_llama_path):
    runner = make_runner(tiny_llama_path)
    bytes_per_block = runner.kv_bytes_per_block()
    cfg = runner.model_config
    assert bytes_per_block == 2 * cfg.num_layers * BLOCK_SIZE * cfg.num_kv_heads * cfg.head_dim * 4
    assert runner.kv_caches.numel() * 4 == 64 * bytes_per_block
    runner.release_kv_cache()
    assert runner.kv_caches is None
    with pytest.raises(EngineError):
        runner.execute(ModelInput([SeqBatchItem([1, 2], 0, [0])]))
    runner.allocate_kv_cache(8)
    ids = seq(6, 8)
    out = runner.execute(ModelInput([SeqBatchItem(ids, 0, [5, 2])]))
    assert_close(out[0], hf_logits(tiny_llama_path, ids)[-1])


def test_runner_exposes_model_facts(tiny_qwen2_path):
    runner = make_runner(tiny_qwen2_path, max_model_len=512)
    hf_config = json.loads((tiny_qwen2_path / "config.json").read_text())
    assert runner.vocab_size == hf_config["vocab_size"]
    assert runner.max_model_len == 512 and runner.block_size == BLOCK_SIZE
    assert runner.eos_token_ids == [hf_config["eos_token_id"]]
    assert runner.model.lm_head is None  # tied embeddings


ROPE_VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_scaling_variants_match_transformers(variant, tiny_llama_gqa_path, tmp_path):
    ckpt = tmp_path / variant
    shutil.copytree(tiny_llama_gqa_path, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": 10000.0, **ROPE_VARIANTS[variant]}
    (ckpt / "config.json").write_text(json.dumps(config))
    ids = seq(30, 9)
    ref = hf_logits(ckpt, ids)
    runner = make_runner(ckpt)
    assert runner.model_config.rope.rope_type == variant
    out = runner.execute(ModelInput([SeqBatchItem(ids[:26], 0, [4, 1, 30, 7, 19, 2, 44, 8])]))
    assert_close(out[0], ref[25])
    for pos in range(26, 30):
        out = runner.execute(ModelInput([SeqBatchItem([ids[pos]], pos, [4, 1, 30, 7, 19, 2, 44, 8])]))
        assert_close(out[0], ref[pos])


def test_rope_scaling_changes_logits(tiny_llama_gqa_path, tmp_path):
    # Guards the test above against a loader that ignores rope_parameters.
    ckpt = tmp_path / "linear"
    shutil.copytree(tiny_llama_gqa_path, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": 10000.0, **ROPE_VARIANTS["linear"]}
    (ckpt / "config.json").write_text(json.dumps(config))
    ids = seq(12, 10)
    base, scaled = make_runner(tiny_llama_gqa_path), make_runner(ckpt)
    a = base.execute(ModelInput([SeqBatchItem(ids, 0, [0, 1, 2])]))
    b = scaled.execute(ModelInput([SeqBatchItem(ids, 0, [0, 1, 2])]))
    assert (a - b).abs().max() > 0.1


def test_short_sliding_window_is_refused(tiny_mistral_path, tmp_path):
    ckpt = tmp_path / "windowed"
    shutil.copytree(tiny_mistral_path, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["sliding_window"] = 128
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="sliding_window"):
        ModelRunner(str(ckpt))


@pytest.mark.parametrize("pause_at", [0, 1], ids=["mid-layer", "between-layers"])
@pytest.mark.parametrize("path_name", ["tiny_llama_path", "tiny_llama_gqa_path"])
def test_a_pass_paused_between_layers_for_another_pass(path_name, pause_at, use_cpu_kernels, request):
    # The engine's side prefill: while a batch's pass is paused between layers, another
    # execute runs for other sequences (here also a prefill on a long cached context, which
    # grows the shared gather workspace). Both passes, and the next decodes reading the K/V
    # both wrote, must still match transformers.
    path = request.getfixturevalue(path_name)
    runner = make_runner(path, num_blocks=128, use_cpu_kernels=use_cpu_kernels)
    a, b, c, d = seq(31, 41), seq(9, 42), seq(71, 43), seq(13, 44)
    ta, tb, tc, td = list(range(0, 8)), list(range(40, 44)), list(range(127, 108, -1)), [60, 61, 62, 63]
    refs = {name: hf_logits(path, s) for name, s in zip("abcd", (a, b, c, d))}
    runner.execute(ModelInput([SeqBatchItem(a[:20], 0, ta, needs_logits=False),
                               SeqBatchItem(c[:60], 0, tc, needs_logits=False),
                               SeqBatchItem(d[:11], 0, td, needs_logits=False)]))
    inner, calls = [], []

    def pause():  # call 0: after the first layer's attention; call 1: after the first layer
        calls.append(1)
        if not inner and len(calls) > pause_at:
            inner.append(runner.execute(ModelInput([SeqBatchItem(c[60:70], 60, tc), SeqBatchItem(b, 0, tb)])))

    assert runner.supports_between_layers
    out = runner.execute(ModelInput([SeqBatchItem(a[20:30], 20, ta), SeqBatchItem([d[11]], 11, td)]), between_layers=pause)
    assert len(inner) == 1
    assert_close(inner[0][0], refs["c"][69])
    assert_close(inner[0][1], refs["b"][8])
    assert_close(out[0], refs["a"][29])
    assert_close(out[1], refs["d"][11])
    out = runner.execute(ModelInput([SeqBatchItem([a[30]], 30, ta), SeqBatchItem([c[70]], 70, tc), SeqBatchItem([d[12]], 12, td)]))
    assert_close(out[0], refs["a"][30])
    assert_close(out[1], refs["c"][70])
    assert_close(out[2], refs["d"][12])


def test_a_pass_offers_a_pause_after_each_attention_and_between_layers(tiny_llama_path):
    # The engine's side prefill waits for the next pause point of the running pass: one
    # after every layer's attention and one between every two layers (2L - 1 in all).
    runner = make_runner(tiny_llama_path)
    calls = []
    runner.execute(ModelInput([SeqBatchItem(seq(5, 7), 0, list(range(0, 4)))]), between_layers=lambda: calls.append(1))
    assert len(calls) == 2 * len(runner.model.layers) - 1
