"""An optional C++ kernel for decode attention on CPU, reading K/V in place through block tables.

The pure-PyTorch path (``attention.py``) must first gather every sequence's blocks into a
padded buffer and then read it again in two batched matmuls: on CPU that memory traffic,
not arithmetic, dominates a decode step. This kernel walks the block table instead and
reads each cached K and V row exactly once, in one pass per (sequence, head).

It is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (cached under
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
#include <cmath>
#include <limits>
#include <vector>

// q [n, H, D]; k_cache / v_cache [KVH, num_slots, D] (one layer); tables [n, max_blocks];
// ctx_lens [n]. Query head h reads KV head h / (H / KVH). Returns [n, H, D].
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor ctx_lens, int64_t block_size,
                                     double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_cache.scalar_type() == at::kFloat, "float32 only");
  q = q.contiguous();
  tables = tables.contiguous();
  ctx_lens = ctx_lens.contiguous();
  const int64_t n = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_cache.size(0), slots = k_cache.size(1), max_blocks = tables.size(1);
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
    std::vector<float> acc(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / KVH, kvh = task % KVH;
      const int64_t L = lp[s];
      const int64_t* table = tp + s * max_blocks;
      const float* kbase = kp + kvh * slots * D;
      const float* vbase = vp + kvh * slots * D;
      scores.resize(group * L);
      // Scores of every query head of this KV head: each K row is loaded once per group.
      for (int64_t j = 0; j < L; ++j) {
        const float* krow = kbase + (table[j / block_size] * block_size + j % block_size) * D;
        for (int64_t g = 0; g < group; ++g) {
          const float* qrow = qp + (s * H + kvh * group + g) * D;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qrow[d] * krow[d];
          scores[g * L + j] = dot * sc;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * L;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < L; ++j) m = sg[j] > m ? sg[j] : m;
        float total = 0.f;
        for (int64_t j = 0; j < L; ++j) { sg[j] = std::exp(sg[j] - m); total += sg[j]; }
        const float inv = 1.f / total;
        for (int64_t j = 0; j < L; ++j) sg[j] *= inv;
      }
      for (int64_t g = 0; g < group; ++g) {
        std::fill(acc.begin(), acc.end(), 0.f);
        const float* sg = scores.data() + g * L;
        for (int64_t j = 0; j < L; ++j) {
          const float* vrow = vbase + (table[j / block_size] * block_size + j % block_size) * D;
          const float p = sg[j];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] += p * vrow[d];
        }
        float* orow = op + (s * H + kvh * group + g) * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = acc[d];
      }
    }
  });
  return out;
}
"""

_lock = threading.Lock()
_kernel: Optional[Callable] = None
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


def paged_decode_kernel() -> Optional[Callable]:
    """The compiled kernel, or None when unavailable (built once per process, lazily)."""
    global _kernel, _tried
    if _tried:
        return _kernel
    with _lock:
        if _tried:
            return _kernel
        _tried = True
        if os.environ.get("FLEETSERVE_CPU_KERNELS", "1") == "0":
            return None
        try:
            from torch.utils.cpp_extension import load_inline

            module = load_inline(
                name=_build_name(),
                cpp_sources=[_SOURCE],
                functions=["paged_decode_attention"],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
            _kernel = module.paged_decode_attention
        except Exception as exc:  # noqa: BLE001 - no compiler/ninja: the torch path still works
            log.warning("C++ paged attention kernel unavailable, using the PyTorch path: %s", exc)
            _kernel = None
    return _kernel
