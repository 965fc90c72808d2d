"""The engine protocol: the one interface every backend (native, vLLM) implements.

Replica deployments, the router and the autoscaler only talk to an engine through
:class:`EngineProtocol`. Typed dataclasses cross the boundary; nothing here imports torch.

Priority follows vLLM's convention: a *lower* value runs first. Tenants' classes map onto
it in ``fleetserve.tenants`` (premium=0, standard=1, batch=2 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Protocol, runtime_checkable

from fleetserve.engine.sampling_params import SamplingParams

# Finish reasons, OpenAI-compatible where OpenAI has one.
FINISH_STOP = "stop"        # EOS, stop string or stop token id
FINISH_LENGTH = "length"    # max_tokens or context limit reached
FINISH_ABORT = "abort"      # aborted by client / admin / deadline
FINISH_ERROR = "error"      # the engine failed on this request only
FINISH_REASONS = frozenset({FINISH_STOP, FINISH_LENGTH, FINISH_ABORT, FINISH_ERROR})


@dataclass(frozen=True)
class LoraRef:
    """The LoRA adapter a request runs with (set by the ingress from its adapter catalog,
    never by the client). ``revision`` identifies the weights (a content hash), so an adapter
    re-added under the same name never shares slots or cached KV with the old weights."""

    name: str  # what clients call it: ``base:adapter`` or an alias
    path: str  # PEFT directory (adapter_config.json + adapter_model.safetensors) on the replica's node
    revision: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.revision}"


@dataclass
class GenerateRequest:
    """One generation request as the engine sees it (after tokenization is optional).

    Exactly one of ``prompt`` / ``prompt_token_ids`` must be given.
    ``cache_salt`` isolates prefix-cache blocks: requests with different salts never share
    KV blocks. The platform sets it per tenant; ``None`` means the engine's default salt.
    """

    request_id: str
    params: SamplingParams
    prompt: Optional[str] = None
    prompt_token_ids: Optional[list[int]] = None
    priority: int = 0
    cache_salt: Optional[str] = None
    tenant_id: Optional[str] = None
    arrival_time: Optional[float] = None
    # Stream pacing: after the first output, at most one merged output per this many seconds
    # (the final output is never held back). Coarse streams cost the serving path far less
    # CPU per token. An engine whose ``capabilities().paces_streams`` is true applies it
    # itself; the others are paced by the replica (``engine.process.pacing.paced``). The platform sets it per model and class.
    stream_interval_s: float = 0.0
    # A continuation (migration, replica failure): the output tokens an earlier attempt of
    # this request already streamed to the client. The engine takes them as output it has
    # produced -- they count toward max_tokens, penalties, the grammar and the sampler's
    # position (the position offset is their number) -- and streams only what follows; its
    # detokenizer replays them, so the text continues where the client's text ends.
    resume_token_ids: list[int] = field(default_factory=list)
    # Run with this LoRA adapter (None: the base model). Its KV never mixes with the base
    # model's or another adapter's in the prefix cache.
    lora: Optional[LoraRef] = None


@dataclass
class TokenLogprob:
    """Logprob of a sampled token plus the top-n alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class RequestOutput:
    """An *incremental* output: what was produced since the previous output of this request.

    Concatenating ``text_delta`` (and ``token_ids_delta``) over a stream gives the full
    completion: no token is ever repeated or dropped, including across preemption/migration.
    The final output has ``finished=True`` and a ``finish_reason``.
    """

    request_id: str
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)
    logprobs_delta: Optional[list[TokenLogprob]] = None
    finished: bool = False
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    error: Optional[str] = None


@dataclass
class EngineStats:
    """Live load of one engine; replicas report it to the router and the autoscaler."""

    num_waiting: int = 0
    num_running: int = 0
    num_swapped: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_block_size: int = 16
    kv_bytes_allocated: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    num_finished: int = 0
    generated_tokens_total: int = 0
    healthy: bool = True
    sleeping: bool = False
    draining: bool = False

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["kv_usage"] = self.kv_usage
        d["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        return d


@dataclass
class ModelInfo:
    """Static facts about the loaded model that the API layer needs."""

    name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]
    has_chat_template: bool = True


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine does beyond the protocol's minimum: declared by the engine
    (``capabilities()``), so callers never probe for attributes."""

    # Honours GenerateRequest.stream_interval_s itself (the final output at once); when
    # False the replica paces the engine's per-step stream.
    paces_streams: bool = False
    # preempt() can evict a running request; when False it always returns False.
    supports_preempt: bool = False
    # sleep()/wake_up() release and restore device memory; when False they raise
    # NotSupportedError.
    supports_sleep: bool = False
    # Serves GenerateRequest.lora and add_adapter/remove_adapter/list_adapters; when False
    # a request with an adapter is a 400 and the adapter calls raise NotSupportedError.
    supports_lora: bool = False


@runtime_checkable
class EngineProtocol(Protocol):
    """Async engine contract shared by the native engine and the vLLM backend.

    - ``generate`` yields incremental :class:`RequestOutput` until one with ``finished``.
      It raises a :class:`fleetserve.errors.InvalidRequestError` (or subclass) *before*
      yielding anything when the request can never be served (bad params, too long).
    - ``abort`` ends a request; its stream finishes with ``finish_reason="abort"``.
    - ``preempt`` asks the engine to evict a running request now (it resumes later with
      its tokens kept). Returns False when the request is not running.
    - ``sleep``/``wake_up`` release and restore device memory (warm pools). A sleeping
      engine rejects new requests with ServiceUnavailableError.
    - ``drain`` stops admission and waits up to ``timeout_s`` for in-flight requests.
    - ``add_adapter`` loads a LoRA adapter now (validating it; it stays resident until the
      LRU evicts it), ``remove_adapter`` evicts every revision of a name (409 while requests
      use it), ``list_adapters`` shows the resident ones (``supports_lora``).
    - ``capabilities`` declares what the engine supports beyond that minimum
      (:class:`EngineCapabilities`: whether it paces streams itself, can preempt, can sleep).
    """

    def capabilities(self) -> EngineCapabilities: ...

    async def start(self) -> None: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    async def preempt(self, request_id: str) -> bool: ...

    def stats(self) -> EngineStats: ...

    async def check_health(self) -> None: ...

    async def sleep(self) -> None: ...

    async def wake_up(self) -> None: ...

    async def drain(self, timeout_s: float) -> int: ...

    async def shutdown(self) -> None: ...

    def model_info(self) -> ModelInfo: ...

    def encode(self, text: str) -> list[int]: ...

    def apply_chat_template(self, messages: list[dict]) -> list[int]: ...

    async def add_adapter(self, ref: LoraRef) -> dict: ...

    async def remove_adapter(self, name: str) -> int: ...

    async def list_adapters(self) -> list[dict]: ...
