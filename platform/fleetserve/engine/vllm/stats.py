"""Live load of a vLLM engine, collected through vLLM's stat-logger hook.

vLLM's engine core runs in another process and sends ``SchedulerStats`` (waiting, running,
KV usage, prefix-cache counters) with every batch of outputs; ``AsyncLLM`` hands them to
its stat loggers. :class:`VllmStatsSink` keeps the latest snapshot plus running totals, and
:func:`make_stat_logger_factory` builds the logger that feeds it.

What is approximate (vLLM exposes no exact live counters to the client process):
- waiting/running/KV usage are as of vLLM's last engine step, not "now"; they are sent
  with outputs, so while the engine is idle they keep the last step's values. When no
  request is unfinished on the client side the backend reports 0 waiting / 0 running.
- ``kv_blocks_used`` is ``round(kv_cache_usage * kv_blocks_total)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class VllmStatsSink:
    num_waiting: int = 0
    num_running: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    generated_tokens_total: int = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if scheduler_stats is not None:
            self.num_waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            self.num_running = scheduler_stats.num_running_reqs
            self.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
            # vLLM's prefix-cache stats are per-step deltas (reset as they are read).
            pcs = scheduler_stats.prefix_cache_stats
            if pcs is not None:
                self.prefix_cache_queries += pcs.queries
                self.prefix_cache_hits += pcs.hits
        if iteration_stats is not None:
            self.num_preemptions += iteration_stats.num_preempted_reqs
            self.generated_tokens_total += iteration_stats.num_generation_tokens


def make_stat_logger_factory(sink: VllmStatsSink) -> Callable:
    """A per-engine ``StatLoggerFactory`` (``(vllm_config, engine_index) -> StatLoggerBase``)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _SinkLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            sink.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self):
            pass

    def factory(vllm_config, engine_index: int = 0):
        return _SinkLogger(vllm_config, engine_index)

    return factory
