"""Pure mappings between fleetserve's engine types and vLLM's (used by ``vllm_backend``).

Kept apart from the engine so each mapping can be read, and unit-tested, on its own.
vLLM is imported inside the functions that need it: importing this module never needs vLLM.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from fleetserve.engine.protocol import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    TokenLogprob,
)
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.errors import (
    ConfigError,
    ContextLengthError,
    EngineError,
    FleetserveError,
    InvalidRequestError,
    ServiceUnavailableError,
)

# vLLM's FinishReason strings -> ours. "repetition" (vLLM's hallucination guard, off unless
# asked for) is a stop the engine chose, so it reads as "stop" to an OpenAI client.
FINISH_REASON_MAP = {
    "stop": FINISH_STOP,
    "length": FINISH_LENGTH,
    "abort": FINISH_ABORT,
    "error": FINISH_ERROR,
    "repetition": FINISH_STOP,
}


def finish_reason_of(reason: Optional[str]) -> str:
    """Our finish reason for vLLM's, on a finished output. A reason we do not know, or none,
    is an error rather than a "stop": the client must not take an unexplained end for a
    complete answer."""
    return FINISH_REASON_MAP.get(str(reason), FINISH_ERROR) if reason is not None else FINISH_ERROR

# vLLM's name for a rejected parameter -> the field of our request it came from.
PARAMETER_FIELD_MAP = {
    "input_tokens": "prompt",
    "prompt": "prompt",
    "prompt_token_ids": "prompt_token_ids",
}

# Engine arguments the backend sets itself; a config may not override them.
RESERVED_ENGINE_ARGS = frozenset({"model", "tensor_parallel_size", "scheduling_policy"})

# Environment defaults for vLLM on CPU, applied only where the variable is unset.
# - KV cache space: vLLM's default (0) sizes the KV pool from free host memory, which on a
#   shared 24 GiB box takes several GiB per replica; 1 GiB holds 170k tokens of the tiny model.
# - Logging: vLLM's INFO log prints a line per request and per stats interval.
CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def apply_env_defaults(env: Optional[dict[str, str]] = None,
                       engine_args: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """Set :data:`CPU_ENV_DEFAULTS` in ``env`` (default ``os.environ``) where unset; returns what was set.

    ``engine_args.kv_cache_memory_bytes`` sizes the KV pool itself: vLLM's CPU platform lets
    ``VLLM_CPU_KVCACHE_SPACE`` override it whenever that variable is set, so the default is
    then left out."""
    env = os.environ if env is None else env
    skip = {"VLLM_CPU_KVCACHE_SPACE"} if (engine_args or {}).get("kv_cache_memory_bytes") else set()
    applied = {}
    for key, value in CPU_ENV_DEFAULTS.items():
        if key not in env and key not in skip:
            env[key] = value
            applied[key] = value
    return applied


def check_engine_args(engine_args: Optional[dict[str, Any]], tensor_parallel_size: int) -> None:
    """The checks that need no vLLM: reserved keys and the parallel size."""
    if engine_args is not None and not isinstance(engine_args, dict):
        raise ConfigError(f"engine_args must be a mapping, got {type(engine_args).__name__}", field="engine_args")
    for key in sorted(RESERVED_ENGINE_ARGS & set(engine_args or {})):
        raise ConfigError(
            f"engine_args.{key} is set by fleetserve (model path, tensor_parallel_size, priority scheduling)",
            field=f"engine_args.{key}",
        )
    if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise ConfigError(
            f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}",
            field="tensor_parallel_size",
        )


def build_engine_args(model: str, engine_args: Optional[dict[str, Any]], tensor_parallel_size: int,
                      served_model_name: Optional[str] = None):
    """``AsyncEngineArgs`` for one model; config mistakes raise ConfigError naming the key.
    ``served_model_name``: the fleetserve model name, which vLLM's metrics carry as ``model_name``."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    check_engine_args(engine_args, tensor_parallel_size)
    engine_args = dict(engine_args or {})
    known = AsyncEngineArgs.__dataclass_fields__
    for key in engine_args:
        if key not in known:
            raise ConfigError(f"engine_args.{key} is not an argument of vLLM's AsyncEngineArgs", field=f"engine_args.{key}")
    # Our stat logger reads the scheduler stats; vLLM's log line every 5 s stays off unless the
    # config turns it on. (vLLM still adds its Prometheus logger next to ours: the replica
    # exports that, see deployments/replica_metrics.py.)
    engine_args.setdefault("disable_log_stats", True)
    if served_model_name and "served_model_name" not in engine_args:
        engine_args["served_model_name"] = served_model_name
    return AsyncEngineArgs(
        model=model,
        tensor_parallel_size=tensor_parallel_size,
        # Lower priority value runs first: the same convention as fleetserve's scheduler.
        scheduling_policy="priority",
        **engine_args,
    )


def to_vllm_structured(spec):
    """A :class:`StructuredOutput` as vLLM's ``StructuredOutputsParams`` (None: unconstrained).
    Tool calls' constraints (named, required) arrive here as json_schema specs too.

    JSON specs go to vLLM as the EBNF grammar the native engine compiles
    (``engine.core.structured.json_schema_ebnf``), not as ``json=``: vLLM would compile the
    schema with xgrammar 0.2.9's own converter, whose length-bounded strings (``maxLength``)
    admit raw control characters, so a constrained answer could fail ``json.loads``. The same
    grammar on both engines also means the same accepted outputs."""
    if spec is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    from fleetserve.engine.core.structured import json_schema_ebnf

    if spec.kind in ("json_object", "json_schema"):
        try:
            return StructuredOutputsParams(grammar=json_schema_ebnf(spec.value or '{"type":"object"}'))
        except RuntimeError as exc:  # xgrammar's schema converter
            raise InvalidRequestError(f"{spec.kind} cannot be compiled: {exc}", field="response_format") from exc
    if spec.kind == "choice":
        return StructuredOutputsParams(choice=list(spec.choices))
    return StructuredOutputsParams(**{spec.kind: spec.value})


def to_vllm_sampling_params(params: SamplingParams, max_tokens: int):
    """Field-by-field copy; ``n`` is always 1 (the caller fans out ``n`` engine requests)."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VllmSamplingParams

    return VllmSamplingParams(
        n=1,
        max_tokens=max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,  # 0 disables in both
        min_p=params.min_p,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        stop=list(params.stop) or None,
        stop_token_ids=list(params.stop_token_ids) or None,
        ignore_eos=params.ignore_eos,
        logprobs=params.logprobs,
        include_stop_str_in_output=params.include_stop_str_in_output,
        logit_bias=dict(params.logit_bias) if params.logit_bias else None,
        structured_outputs=to_vllm_structured(params.structured),
        skip_special_tokens=True,  # as fleetserve's detokenizer
        # Each output carries only what is new: exactly our incremental RequestOutput.
        output_kind=RequestOutputKind.DELTA,
    )


def to_token_logprobs(token_ids: list[int], logprobs: Optional[list], top_n: Optional[int]) -> Optional[list[TokenLogprob]]:
    """vLLM's per-token ``{token_id: Logprob}`` dicts -> our TokenLogprob list.

    vLLM puts the sampled token in each dict even when it is outside the top-n (with its
    rank); ``top`` keeps only the ranks 1..n, as OpenAI's ``top_logprobs``.
    """
    if logprobs is None or top_n is None:
        return None
    out = []
    for token_id, entry in zip(token_ids, logprobs):
        sampled = entry.get(token_id)
        top = {tid: lp.logprob for tid, lp in entry.items() if lp.rank is not None and lp.rank <= top_n}
        out.append(TokenLogprob(token_id, float(sampled.logprob) if sampled is not None else float("nan"), top))
    return out


def map_vllm_error(exc: BaseException) -> FleetserveError:
    """One vLLM exception -> the typed fleetserve error the API edge knows how to map."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, VLLMValidationError):
        field = PARAMETER_FIELD_MAP.get(exc.parameter or "", exc.parameter)
        cls = ContextLengthError if "context length" in str(exc) else InvalidRequestError
        return cls(str(exc), field=field)
    if isinstance(exc, VLLMClientError):
        return InvalidRequestError(str(exc))
    if isinstance(exc, GracefulHTTPError):  # vLLM's own queue limits
        return ServiceUnavailableError(f"vLLM rejected the request: {exc}")
    if isinstance(exc, EngineDeadError):
        return ServiceUnavailableError(f"the vLLM engine is dead: {exc}")
    if isinstance(exc, ValueError):
        return InvalidRequestError(str(exc))
    return EngineError(f"vLLM failed: {type(exc).__name__}: {exc}")
