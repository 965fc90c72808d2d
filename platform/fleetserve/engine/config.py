"""Engine arguments of the native backend (one schema for YAML, CLI and Helm values)."""

from __future__ import annotations

import os
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class EngineConfig(BaseModel):
    """Arguments of fleetserve's native engine."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Path to a local Hugging Face-format checkpoint directory.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weight and KV dtype. float32 on CPU; bfloat16/float16 on CUDA."
    )
    device: str = Field("cpu", description="torch device: 'cpu' or 'cuda[:N]'.")
    max_model_len: Optional[int] = Field(
        None, ge=1, description="Context limit; defaults to the checkpoint's max_position_embeddings."
    )
    block_size: int = Field(16, ge=1, le=256, description="Tokens per KV block.")
    kv_cache_memory_bytes: Optional[int] = Field(
        None, ge=1, description="KV pool budget in bytes. Takes precedence over kv_cache_memory_fraction."
    )
    kv_cache_memory_fraction: float = Field(
        0.05, gt=0, le=0.95,
        description="KV pool budget as a fraction of free device memory (host RAM on CPU) when no byte budget is set.",
    )
    num_kv_blocks: Optional[int] = Field(
        None, ge=1, description="Exact number of KV blocks (overrides both memory budgets; for tests)."
    )
    max_num_seqs: int = Field(64, ge=1, description="Max requests running in one step.")
    max_num_batched_tokens: int = Field(
        2048, ge=1, description="Token budget of one step (decode tokens + prefill chunk tokens)."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of identical prompt prefixes (salted per tenant).")
    preemption_mode: Literal["recompute", "swap"] = Field(
        "recompute", description="How a preempted request's KV is handled: dropped and recomputed, or swapped to host memory."
    )
    swap_space_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Host pool size for swap preemption, in bytes."
    )
    seed: int = Field(0, description="Engine seed for requests that do not set one.")
    num_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads on CPU (default: torch's choice).")
    isolate_priority_prefill: bool = Field(
        True,
        description=(
            "A request of a strictly higher priority class than everything running gets a step of its own for "
            "its prefill, so its first token does not wait for a batch-wide step of lower-class decodes. Lower "
            "classes skip at most one step per such arrival."
        ),
    )
    max_consecutive_isolated_steps: int = Field(
        2,
        ge=1,
        description=(
            "With isolate_priority_prefill: at most this many isolated steps in a row, so lower classes keep at "
            "least one step in every max+1 whatever the arrival rate of higher ones. 1 makes a higher-class request "
            "that arrives during another's isolated step share a batch-wide step; 2 gives it a step of its own too."
        ),
    )
    interleave_priority_prefill: bool = Field(
        True,
        description=(
            "A new request of a strictly higher priority class than some running request does not wait for the "
            "running step to end: the step's forward pass pauses "
            "between two layers, the new request's prefill runs as a step of its own, and the pass resumes "
            "(native runner only; at most max_side_prefills_per_step such prefills per step; it never preempts anyone)."
        ),
    )
    max_side_prefills_per_step: int = Field(
        2,
        ge=1,
        description=(
            "With interleave_priority_prefill: at most this many between-layers prefills while one step's forward "
            "pass runs, which bounds how long they delay that step. 1 makes a second arrival during the same step "
            "(two premium requests a few ms apart) wait for the step to end; 2 starts it at the next pause point."
        ),
    )
    interleave_same_class_max_priority: Optional[int] = Field(
        0,
        ge=0,
        description=(
            "With interleave_priority_prefill: a new request of this priority class or better also gets that "
            "between-layers prefill when nothing running is of a better class than its own, so a premium arrival "
            "(class 0 in the default tiers) does not wait for a step of other premium requests' decodes either. "
            "Those decodes' next token waits one prefill (hidden by stream pacing). None: strictly higher classes only."
        ),
    )
    engine_process: bool = Field(
        True,
        description=(
            "In a replica, run the step loop (scheduler, model, step thread) in a child process, as vLLM V1 "
            "runs its EngineCore, so the replica's event loop and Ray's threads never wait for the GIL behind "
            "the model's forward pass; outputs cross one pipe message per step. Off: a thread of the replica. "
            "(AsyncEngine used directly always runs it in a thread.)"
        ),
    )
    step_thread_policy: Literal["auto", "normal", "idle"] = Field(
        "auto",
        description=(
            "Linux CPU scheduling policy of the engine's step thread. 'idle' (SCHED_IDLE): any other runnable "
            "thread on the node preempts it at once, so the request path sharing its cores (HTTP, auth, routing, "
            "streaming) is never queued behind model compute; the engine still gets every cycle they leave. "
            "'auto': 'idle' when the model runs on CPU, 'normal' on CUDA (there the thread launches kernels "
            "and must not be delayed). Use 'normal' on a CPU node shared with unrelated busy processes."
        ),
    )

    enable_lora: bool = Field(
        False, description="Serve LoRA adapters (GenerateRequest.lora): allocates max_loras adapter slots per runner."
    )
    max_loras: int = Field(
        4, ge=1, le=64,
        description="Adapters resident at once (slots); the least recently used unpinned one is evicted for a new one. "
                    "Requests of at most this many distinct adapters run at once.",
    )
    max_lora_rank: int = Field(16, ge=1, le=256, description="Largest LoRA rank r an adapter may have.")

    lift_step_thread_on_arrival: bool = Field(
        True,
        description=(
            "With the step thread under SCHED_IDLE in an engine process: a normal-priority thread waits on "
            "the process's pipe and lifts the step thread to normal priority when a message arrives, until it "
            "has taken it in and handed a higher-class request's step to the lane (at its next pause point, at "
            "most half a layer, or after the step it runs), so new requests are taken in without "
            "waiting for a free core (priority inheritance). Needs CAP_SYS_NICE; without it this is logged once "
            "and the step thread keeps plain SCHED_IDLE."
        ),
    )

    @property
    def step_thread_idle(self) -> bool:
        """Whether the step thread should run under SCHED_IDLE (``auto`` resolved)."""
        if self.step_thread_policy == "auto":
            return self.device == "cpu"
        return self.step_thread_policy == "idle"

    @field_validator("model")
    @classmethod
    def _expand_home(cls, v: str) -> str:
        # Paths in configs and docs are written as ~/.cache/...; torch and tokenizers won't expand them.
        return os.path.expanduser(v)

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        return self
