"""How many KV blocks the pool gets: from an exact count, a byte budget, or a fraction of
free device memory (host RAM on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fleetserve.engine.config import EngineConfig
from fleetserve.errors import ConfigError


@dataclass
class KVBudget:
    num_blocks: int
    num_host_blocks: int
    bytes_per_block: int
    source: str  # "num_kv_blocks" | "kv_cache_memory_bytes" | "kv_cache_memory_fraction"

    @property
    def bytes_allocated(self) -> int:
        return self.num_blocks * self.bytes_per_block


def free_device_memory(device: str) -> int:
    """Free bytes on ``device``: CUDA's own count, else MemAvailable from /proc/meminfo."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan_kv_budget(config: EngineConfig, bytes_per_block: int, max_model_len: int) -> KVBudget:
    """Blocks for the device pool, capped at what ``max_num_seqs`` full-length sequences
    could ever use (a larger pool would only be memory nobody can touch)."""
    if config.num_kv_blocks is not None:
        num_blocks, source = config.num_kv_blocks, "num_kv_blocks"
    else:
        if config.kv_cache_memory_bytes is not None:
            budget, source = config.kv_cache_memory_bytes, "kv_cache_memory_bytes"
        else:
            budget = int(free_device_memory(config.device) * config.kv_cache_memory_fraction)
            source = "kv_cache_memory_fraction"
        num_blocks = budget // bytes_per_block
        useful = config.max_num_seqs * -(-max_model_len // config.block_size)
        num_blocks = min(num_blocks, useful)
    if num_blocks < 1:
        raise ConfigError(
            f"KV budget holds no block of {bytes_per_block} bytes; raise kv_cache_memory_bytes",
            field="kv_cache_memory_bytes",
        )
    num_host = config.swap_space_bytes // bytes_per_block if config.preemption_mode == "swap" else 0
    return KVBudget(num_blocks, num_host, bytes_per_block, source)
