"""The model runner: fleetserve's decoder plus the paged K/V pool of one replica.

It implements :class:`fleetserve.engine.core.runner_types.ModelRunnerProtocol`. A step's items
(prefill chunks and decode tokens of different requests) become one flat token batch and
run in ONE forward pass; the per-step index tensors (tokens, positions, cache slots,
padded block tables, masks) are built once per step by
:class:`fleetserve.engine.model.step_layout.StepBuilder`, so the per-layer work is pure
tensor code. The same code runs on CPU and CUDA.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.model.cpu_kernels import paged_decode_kernel, rms_norm_kernel, silu_and_mul_kernel
from fleetserve.engine.model.cpu_linear import pack_linear_layers, packed_linear_available, warm_row_buckets
from fleetserve.engine.runtime.hugepages import advise_huge_pages
from fleetserve.engine.model.layers import RMSNorm, SwiGLU, rotary_tables
from fleetserve.engine.model.loader import load_model
from fleetserve.engine.model.step_layout import StepBuilder
from fleetserve.engine.lora.peft_format import load_adapter
from fleetserve.engine.lora.slots import LoraSlots
from fleetserve.engine.core.runner_types import ModelInput
from fleetserve.errors import ConfigError, EngineError

log = logging.getLogger(__name__)


@dataclass
class RunnerTimings:
    """Cumulative seconds inside ``execute``: Python batch preparation vs the forward pass
    (a benchmark uses them to report the Python share of step time)."""

    calls: int = 0
    prepare_s: float = 0.0
    forward_s: float = 0.0

    def reset(self) -> None:
        self.calls, self.prepare_s, self.forward_s = 0, 0.0, 0.0


class ModelRunner:
    """Owns the weights and the paged K/V pool; see ``ModelRunnerProtocol`` for the contract.

    ``ModelRunner(EngineConfig(...))`` or ``ModelRunner("/path/to/ckpt", block_size=16, ...)``
    (keyword overrides are EngineConfig fields). ``use_cpu_kernels=False`` forces the
    plain PyTorch paths (gathered attention, ``F.linear``) even where the C++ decode kernel
    and oneDNN's packed linear layers are available.
    """

    # ``execute(..., between_layers=fn)`` calls ``fn`` between layers; ``fn`` may call
    # ``execute`` again for other sequences (each call builds its own step layout; the
    # shared gather workspace only lives within one layer's attention).
    supports_between_layers = True

    def __init__(self, config: EngineConfig | str | Path, *, use_cpu_kernels: bool = True, **overrides):
        self._use_cpu_kernels = use_cpu_kernels
        if isinstance(config, (str, Path)):
            config = EngineConfig(model=str(config), **overrides)
        elif overrides:
            config = EngineConfig(**{**config.model_dump(), **overrides})
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.model, self.model_config = load_model(config.model, self.device, self.dtype)
        self._install_cpu_kernels()
        mc = self.model_config
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len or mc.max_position_embeddings
        self.vocab_size = mc.vocab_size
        self.eos_token_ids = list(mc.eos_token_ids)
        self.bos_token_id: Optional[int] = mc.bos_token_id
        num_positions = max(self.max_model_len, mc.max_position_embeddings)
        self._rot = rotary_tables(mc.rope, mc.head_dim, num_positions, mc.max_position_embeddings).to(self.device)
        # Heads before blocks: see fleetserve.engine.model.attention for why.
        self._kv_shape = (mc.num_layers, 2, mc.num_kv_heads, 0, self.block_size, mc.head_dim)
        self.kv_caches: Optional[torch.Tensor] = None
        self.host_kv: Optional[torch.Tensor] = None
        self.num_blocks = 0
        self.num_host_blocks = 0
        self.timings = RunnerTimings()
        self._builder: Optional[StepBuilder] = None
        self.lora_slots: Optional[LoraSlots] = None
        if config.enable_lora:
            self.lora_slots = LoraSlots(mc, config.max_loras, config.max_lora_rank, self.dtype, self.device)

    # ---------------------------------------------------------------- LoRA slots

    @property
    def max_loras(self) -> int:
        """Adapter slots (0: LoRA is off)."""
        return self.lora_slots.num_slots if self.lora_slots is not None else 0

    def load_lora(self, slot: int, path: str) -> None:
        """Write the PEFT adapter at ``path`` into ``slot`` (raises ConfigError when it does not fit)."""
        if self.lora_slots is None:
            raise ConfigError("this engine runs without LoRA (enable_lora: false)", field="enable_lora")
        self.lora_slots.write(slot, load_adapter(path, self.model_config, self.lora_slots.max_rank))

    def clear_lora(self, slot: int) -> None:
        if self.lora_slots is not None:
            self.lora_slots.clear(slot)

    # ---------------------------------------------------------------- K/V pool

    def kv_bytes_per_block(self) -> int:
        layers, two, kvh, _, bs, hd = self._kv_shape
        return layers * two * bs * kvh * hd * torch.tensor([], dtype=self.dtype).element_size()

    def _pool_shape(self, num_blocks: int) -> tuple[int, ...]:
        shape = list(self._kv_shape)
        shape[3] = num_blocks
        return tuple(shape)

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        if num_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {num_blocks}", field="num_kv_blocks")
        # Zeroed, not left empty: padded reads of never-written slots are masked, but a NaN
        # bit pattern there would still poison ``softmax @ V``. On CPU the huge-page advice
        # must come before the zeroing touches the pages.
        self.kv_caches = torch.empty(self._pool_shape(num_blocks), device=self.device, dtype=self.dtype)
        advise_huge_pages(self.kv_caches)
        self.kv_caches.zero_()
        self.num_blocks = num_blocks
        mc = self.model_config
        self._builder = StepBuilder(
            block_size=self.block_size, num_blocks=num_blocks, num_kv_heads=mc.num_kv_heads,
            group=mc.num_heads // mc.num_kv_heads, head_dim=mc.head_dim, max_positions=self._rot.shape[0],
            dtype=self.dtype, device=self.device, decode_kernel=self._decode_kernel(),
        )
        if num_host_blocks:
            self.host_kv = torch.zeros(
                self._pool_shape(num_host_blocks), dtype=self.dtype, pin_memory=self.device.type == "cuda"
            )
        else:
            self.host_kv = None
        self.num_host_blocks = num_host_blocks

    def _install_cpu_kernels(self) -> None:
        """On CPU in float32: oneDNN's packed linear layers and the fused SwiGLU and RMSNorm kernels."""
        if not self._use_cpu_kernels or self.device.type != "cpu" or self.dtype != torch.float32:
            return
        if packed_linear_available(self.device, self.dtype):
            pack_linear_layers(self.model)
            t0 = time.perf_counter()
            calls = warm_row_buckets(self.model, self.config.max_num_batched_tokens)
            log.info("oneDNN linear: %d row-bucket shapes built in %.2fs", calls, time.perf_counter() - t0)
        fused_act, fused_norm = silu_and_mul_kernel(), rms_norm_kernel()
        for module in self.model.modules():
            if isinstance(module, SwiGLU):
                module.silu_and_mul = fused_act
            elif isinstance(module, RMSNorm):
                module.kernel = fused_norm

    def _decode_kernel(self):
        if self.device.type != "cpu" or self.dtype != torch.float32 or not self._use_cpu_kernels:
            return None
        return paged_decode_kernel()

    def release_kv_cache(self) -> None:
        self.kv_caches = None
        self._builder = None
        self.host_kv = None
        self.num_blocks = self.num_host_blocks = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def swap_out(self, mapping: Sequence[tuple[int, int]]) -> None:
        if not mapping:
            return
        if self.host_kv is None or self.kv_caches is None:
            raise EngineError("swap_out needs a device pool and a host pool (allocate_kv_cache(num_host_blocks>0))")
        dev = torch.tensor([d for d, _ in mapping], device=self.device)
        host = torch.tensor([h for _, h in mapping])
        self.host_kv.index_copy_(3, host, self.kv_caches.index_select(3, dev).to("cpu"))

    def swap_in(self, mapping: Sequence[tuple[int, int]]) -> None:
        if not mapping:
            return
        if self.host_kv is None or self.kv_caches is None:
            raise EngineError("swap_in needs a device pool and a host pool (allocate_kv_cache(num_host_blocks>0))")
        host = torch.tensor([h for h, _ in mapping])
        dev = torch.tensor([d for _, d in mapping], device=self.device)
        blocks = self.host_kv.index_select(3, host).to(self.device, non_blocking=True)
        self.kv_caches.index_copy_(3, dev, blocks)

    # ---------------------------------------------------------------- forward

    @torch.inference_mode()
    def execute(self, model_input: ModelInput, between_layers: Optional[Callable[[], None]] = None) -> torch.Tensor:
        if self.kv_caches is None:
            raise EngineError("execute called without a KV pool (allocate_kv_cache first, or wake the engine)")
        items = model_input.items
        if not items:
            return torch.empty(0, self.vocab_size)
        t0 = time.perf_counter()
        step = self._builder.build(items)
        t1 = time.perf_counter()
        rot = self._rot.index_select(0, step.positions).unsqueeze(1)
        lora = None
        if step.lora_rows is not None:
            if self.lora_slots is None:
                raise EngineError("a batch item names a LoRA slot but this runner has none")
            lora = self.lora_slots.step(step.lora_rows)
        hidden = self.model(step.token_ids, rot, self.kv_caches, step.meta, between_layers, lora)
        if step.logit_rows:
            rows = torch.tensor(step.logit_rows, device=self.device)
            logits = self.model.logits(hidden.index_select(0, rows)).to("cpu")
        else:
            logits = torch.empty(0, self.vocab_size)
        t2 = time.perf_counter()
        tm = self.timings
        tm.calls += 1
        tm.prepare_s += t1 - t0
        tm.forward_s += t2 - t1
        return logits
