"""Optional C++ kernels for CPU: decode attention reading K/V in place through block tables,
and the SwiGLU activation and RMSNorm each fused into one pass.

The pure-PyTorch path (``attention.py``) must first gather every sequence's blocks into a
padded buffer and then read it again in two batched matmuls: on CPU that memory traffic,
not arithmetic, dominates a decode step. This kernel walks the block table instead and
reads each cached K and V row exactly once, in one pass per (sequence, head).

SiLU-and-multiply reads the fused gate|up projection once and writes the product, where
the PyTorch form runs two strided elementwise passes and allocates two temporaries;
RMSNorm likewise runs as one pass per row.

They are compiled on first use with ``torch.utils.cpp_extension.load_inline`` (cached under
``~/.cache/torch_extensions``; needs a C++ compiler and ninja) and used only for float32
tensors on CPU. If it cannot be built, or ``FLEETSERVE_CPU_KERNELS=0``, the pure-PyTorch
path runs instead: same results to float rounding (tests compare both against transformers).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n * p(f) with a degree-6
// polynomial for 2^f, f in [0, 1) (relative error ~2e-7). Branch-free and inlineable, so
// the compiler vectorizes the loops below; libm's expf is a scalar call per score.
static inline float exp_nonpositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float t = x * 1.44269504088896341f;
  const float n = std::floor(t);
  const float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// q [n, H, D]; k_cache / v_cache [KVH, num_slots, D] (one layer); tables [n, max_blocks];
// ctx_lens [n]. Query head h reads KV head h / (H / KVH). Returns [n, H, D].
//
// One task per (sequence, KV head): walk the block table block by block (no per-row
// division), score every query head of the group against each K row while it is in
// cache, softmax, then read each V row once for the whole group. Decode attention on CPU
// is bound by reading K/V, so every cached row is loaded exactly once.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor ctx_lens, int64_t block_size,
                                     double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_cache.scalar_type() == at::kFloat, "float32 only");
  TORCH_CHECK(k_cache.stride(2) == 1 && k_cache.stride(1) == k_cache.size(2), "K rows must be contiguous");
  TORCH_CHECK(v_cache.stride(2) == 1 && v_cache.stride(1) == v_cache.size(2), "V rows must be contiguous");
  q = q.contiguous();
  tables = tables.contiguous();
  ctx_lens = ctx_lens.contiguous();
  const int64_t n = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_cache.size(0), max_blocks = tables.size(1);
  const int64_t k_head_stride = k_cache.stride(0), v_head_stride = v_cache.stride(0);
  const int64_t group = H / KVH;
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = ctx_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, n * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(group * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / KVH, kvh = task % KVH;
      const int64_t L = lp[s];
      const int64_t* table = tp + s * max_blocks;
      const float* kbase = kp + kvh * k_head_stride;
      const float* vbase = vp + kvh * v_head_stride;
      const float* qg = qp + (s * H + kvh * group) * D;  // the group's query rows, contiguous
      scores.resize(group * L);
      for (int64_t j0 = 0; j0 < L; j0 += block_size) {
        const int64_t rows = std::min(block_size, L - j0);
        const float* kblock = kbase + table[j0 / block_size] * block_size * D;
        for (int64_t r = 0; r < rows; ++r) {
          const float* krow = kblock + r * D;
          for (int64_t g = 0; g < group; ++g) {
            const float* qrow = qg + g * D;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += qrow[d] * krow[d];
            scores[g * L + j0 + r] = dot * sc;
          }
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * L;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < L; ++j) m = sg[j] > m ? sg[j] : m;
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < L; ++j) {
          const float e = exp_nonpositive(sg[j] - m);
          sg[j] = e;
          total += e;
        }
        const float inv = 1.f / total;
#pragma omp simd
        for (int64_t j = 0; j < L; ++j) sg[j] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j0 = 0; j0 < L; j0 += block_size) {
        const int64_t rows = std::min(block_size, L - j0);
        const float* vblock = vbase + table[j0 / block_size] * block_size * D;
        for (int64_t r = 0; r < rows; ++r) {
          const float* vrow = vblock + r * D;
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * L + j0 + r];
            float* ag = acc.data() + g * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) ag[d] += p * vrow[d];
          }
        }
      }
      float* og = op + (s * H + kvh * group) * D;
      std::copy(acc.begin(), acc.end(), og);
    }
  });
  return out;
}

// x [T, 2 * I] (gate | up, as the fused projection writes them) -> silu(gate) * up [T, I]
// in one pass; the unfused form reads two strided halves and writes two temporaries.
torch::Tensor silu_and_mul(torch::Tensor x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "float32 [T, 2I] only");
  x = x.contiguous();
  const int64_t T = x.size(0), I = x.size(1) / 2;
  auto out = torch::empty({T, I}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = xp + t * 2 * I;
      const float* u = g + I;
      float* o = op + t * I;
#pragma omp simd
      for (int64_t i = 0; i < I; ++i) {
        // silu(g) = g / (1 + e^-g), with e^-|g| (<= 1) so the polynomial's range holds.
        const float e = exp_nonpositive(-std::fabs(g[i]));
        const float sig = g[i] >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
        o[i] = g[i] * sig * u[i];
      }
    }
  });
  return out;
}

// x [T, hidden] -> x / sqrt(mean(x^2) + eps) * weight, one pass per row (torch's CPU
// rms_norm runs pow, mean, add, rsqrt and two multiplies as separate passes).
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && weight.scalar_type() == at::kFloat,
              "float32 [T, hidden] only");
  x = x.contiguous();
  weight = weight.contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, T, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = xp + t * N;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < N; ++i) ss += row[i] * row[i];
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(N) + e);
      float* o = op + t * N;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) o[i] = row[i] * inv * wp[i];
    }
  });
  return out;
}
"""

_lock = threading.Lock()
_module = None
_tried = False


def _build_name() -> str:
    # The build is tuned for this CPU (-march=native): key it by the CPU's flags so a cache
    # shared between different machines never loads a binary with unsupported instructions.
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    digest = hashlib.sha256((_SOURCE + flags + torch.__version__).encode()).hexdigest()[:12]
    return f"fleetserve_paged_attention_{digest}"


def _load():
    """The compiled module, or None when unavailable (built once per process, lazily)."""
    global _module, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        _tried = True
        if os.environ.get("FLEETSERVE_CPU_KERNELS", "1") == "0":
            return None
        try:
            from torch.utils.cpp_extension import load_inline

            _module = load_inline(
                name=_build_name(),
                cpp_sources=[_SOURCE],
                functions=["paged_decode_attention", "silu_and_mul", "rms_norm"],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - no compiler/ninja: the torch path still works
            log.warning("C++ CPU kernels unavailable, using the PyTorch paths: %s", exc)
            _module = None
    return _module


def paged_decode_kernel() -> Optional[Callable]:
    """``paged_decode_attention(q, k_cache, v_cache, tables, ctx_lens, block_size, scale)``, or None."""
    module = _load()
    return None if module is None else module.paged_decode_attention


def silu_and_mul_kernel() -> Optional[Callable]:
    """``silu_and_mul(x [T, 2I]) -> [T, I]`` (float32, CPU), or None."""
    module = _load()
    return None if module is None else module.silu_and_mul


def rms_norm_kernel() -> Optional[Callable]:
    """``rms_norm(x [T, hidden], weight, eps) -> [T, hidden]`` (float32, CPU), or None."""
    module = _load()
    return None if module is None else module.rms_norm
