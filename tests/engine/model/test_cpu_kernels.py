"""The CPU fast paths against their plain PyTorch definitions (the runner tests compare
whole models against transformers; these pin the numerics at the edges)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fleetserve.engine.model.cpu_kernels import paged_decode_kernel, rms_norm_kernel, silu_and_mul_kernel
from fleetserve.engine.model import cpu_linear
from fleetserve.engine.model.cpu_linear import PackedLinear, pack_linear_layers, packed_linear_available
from fleetserve.engine.runtime.hugepages import advise_huge_pages


@pytest.fixture
def silu_and_mul():
    kernel = silu_and_mul_kernel()
    if kernel is None:
        pytest.skip("C++ kernels could not be built here")
    return kernel


def test_silu_and_mul_matches_torch_over_a_wide_range(silu_and_mul):
    gen = torch.Generator().manual_seed(0)
    gate = torch.cat([torch.linspace(-120, 120, 2001), torch.randn(999, generator=gen) * 4])
    up = torch.randn(3000, generator=gen)
    x = torch.stack([torch.cat([gate, up]), torch.cat([-gate, up])])  # [2, 2I]
    ref = F.silu(x[:, :3000]) * x[:, 3000:]
    torch.testing.assert_close(silu_and_mul(x), ref, rtol=2e-6, atol=1e-6)


def test_decode_kernel_softmax_is_exact_for_peaked_scores():
    kernel = paged_decode_kernel()
    if kernel is None:
        pytest.skip("C++ kernels could not be built here")
    # One key far above the rest: exp of very negative differences must underflow to 0,
    # not wrap around (the polynomial exp clamps its input).
    gen = torch.Generator().manual_seed(1)
    kvh, d, bs, length = 2, 16, 4, 11
    k = torch.randn(kvh, 8 * bs, d, generator=gen)
    v = torch.randn(kvh, 8 * bs, d, generator=gen)
    q = torch.randn(1, 4, d, generator=gen)
    table = torch.tensor([[5, 2, 7, 0]])
    k[:, 2 * bs + 1] = q[0, :2].repeat_interleave(1, 0) * 500  # slot of position 5
    out = kernel(q, k, v, table, torch.tensor([length]), bs, 1.0)
    slots = torch.cat([torch.arange(b * bs, b * bs + bs) for b in table[0].tolist()])[:length]
    kk = k[:, slots].repeat_interleave(2, 0)  # [H, L, D]
    vv = v[:, slots].repeat_interleave(2, 0)
    ref = torch.softmax((q[0, :, None, :] * kk).sum(-1), dim=-1)[:, :, None].mul(vv).sum(1)
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)


def test_packed_linear_matches_f_linear_for_any_row_count():
    if not packed_linear_available(torch.device("cpu"), torch.float32):
        pytest.skip("oneDNN is not available in this torch build")
    gen = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(40, 24, generator=gen), torch.randn(40, generator=gen)
    layer = PackedLinear(weight, bias)
    # exact, padded to a bucket, one full chunk, chunks plus a padded remainder
    for rows in (1, 3, 16, 17, 64, 200, 256, 257, 600):
        x = torch.randn(rows, 24, generator=gen)
        torch.testing.assert_close(layer(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 37, 24, generator=gen)  # leading dimensions are kept
    torch.testing.assert_close(layer(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_packed_linear_calls_onednn_with_a_bounded_set_of_row_counts(monkeypatch):
    """oneDNN keeps ~0.6 MB per input shape it has seen: every row count 1..2048 must map
    onto the 31 fixed buckets, which ``warm_row_buckets`` builds up front."""
    if not packed_linear_available(torch.device("cpu"), torch.float32):
        pytest.skip("oneDNN is not available in this torch build")
    layer = PackedLinear(torch.randn(8, 4), None)
    model = nn.Sequential(PackedLinear(torch.randn(8, 4), None), PackedLinear(torch.randn(8, 4), None))
    seen = set()
    real = torch.ops.mkldnn._linear_pointwise

    class Ops:
        @staticmethod
        def _linear_pointwise(x, *args):
            seen.add(x.shape[0])
            return real(x, *args)

    monkeypatch.setattr(cpu_linear.torch.ops, "mkldnn", Ops)
    for rows in range(1, 2049):
        assert layer(torch.ones(rows, 4)).shape == (rows, 8)
    assert seen == set(cpu_linear.row_buckets(2048))
    assert len(seen) == 31 and max(seen) == cpu_linear.CHUNK_ROWS
    seen.clear()
    assert cpu_linear.warm_row_buckets(model, 100) == len(cpu_linear.row_buckets(100))  # one per shape
    assert seen == set(cpu_linear.row_buckets(100)) and max(seen) == 112


def test_pack_linear_layers_swaps_every_linear():
    if not packed_linear_available(torch.device("cpu"), torch.float32):
        pytest.skip("oneDNN is not available in this torch build")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4, bias=False)))
    x = torch.randn(5, 8)
    ref = model(x)
    assert pack_linear_layers(model) == 2
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_huge_page_advice_leaves_contents_usable():
    t = torch.empty(3 << 20)  # 12 MiB: spans whole 2 MiB pages
    advise_huge_pages(t)  # advisory: True on Linux with THP, False elsewhere
    t.fill_(1.5)
    assert float(t.sum()) == 1.5 * t.numel()
    assert advise_huge_pages(torch.empty(16)) is False  # no whole huge page inside


def test_rms_norm_matches_torch():
    kernel = rms_norm_kernel()
    if kernel is None:
        pytest.skip("C++ kernels could not be built here")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(37, 96, generator=gen) * torch.logspace(-3, 3, 37)[:, None]  # row scales 1e-3..1e3
    weight = torch.randn(96, generator=gen)
    torch.testing.assert_close(kernel(x, weight, 1e-6), F.rms_norm(x, (96,), weight, 1e-6), rtol=1e-5, atol=1e-6)
