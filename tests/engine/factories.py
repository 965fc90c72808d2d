"""Shared factories for engine tests; every one takes ``**overrides``."""

from __future__ import annotations

import itertools
from typing import Optional

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.core.kv_cache_manager import KVCacheManager
from fleetserve.engine.core.llm_engine import LLMEngine
from fleetserve.engine.protocol import GenerateRequest
from fleetserve.engine.core.request import Request
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.core.scheduler import Scheduler
from fleetserve.engine.tokenizer import Tokenizer
from tests.engine.fake_runner import FakeRunner

_ids = itertools.count()


def greedy(**overrides) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": 8, **overrides})


def make_request(prompt: Optional[list[int]] = None, **overrides) -> Request:
    """An engine Request; ``arrival_time`` defaults to a fresh increasing value."""
    n = next(_ids)
    params = overrides.pop("params", None) or greedy(max_tokens=overrides.pop("max_tokens", 8))
    kwargs = {
        "max_tokens": params.max_tokens,
        "arrival_time": float(n),
        "priority": 0,
        "salt": None,
        **overrides,
    }
    rid = kwargs.pop("request_id", f"r{n}")
    return Request(rid, prompt if prompt is not None else [1, 2, 3, 4, 5], params, **kwargs)


def make_generate_request(**overrides) -> GenerateRequest:
    kwargs = {
        "request_id": f"g{next(_ids)}",
        "params": greedy(),
        "prompt_token_ids": [1, 2, 3, 4, 5],
        **overrides,
    }
    return GenerateRequest(**kwargs)


def make_config(**overrides) -> EngineConfig:
    kwargs = {
        "model": "fake",
        "block_size": 4,
        "num_kv_blocks": 64,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 32,
        **overrides,
    }
    return EngineConfig(**kwargs)


def make_runner(**overrides) -> FakeRunner:
    return FakeRunner(**overrides)


def make_engine(runner: Optional[FakeRunner] = None, tokenizer: Optional[Tokenizer] = None, **config_overrides) -> LLMEngine:
    config = make_config(**config_overrides)
    runner = runner or make_runner(block_size=config.block_size)
    return LLMEngine(config, runner=runner, tokenizer=tokenizer)


def make_kv(**overrides) -> KVCacheManager:
    kwargs = {"num_blocks": 16, "block_size": 4, "enable_prefix_caching": True, "num_host_blocks": 0, **overrides}
    num_blocks, block_size = kwargs.pop("num_blocks"), kwargs.pop("block_size")
    return KVCacheManager(num_blocks, block_size, **kwargs)


def make_scheduler(kv: Optional[KVCacheManager] = None, **overrides) -> Scheduler:
    kwargs = {"max_num_seqs": 8, "max_num_batched_tokens": 32, "preemption_mode": "recompute", **overrides}
    return Scheduler(kv or make_kv(), **kwargs)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_byte_tokenizer() -> Tokenizer:
    """Byte-level tokenizer without merges: token id == byte value, id 256 is EOS. Multi-byte
    characters span several tokens, which is what UTF-8 safety tests need."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")
    hf.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    return Tokenizer(hf)


def run_to_completion(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list]:
    """Step until idle; returns each request's output deltas in order."""
    streams: dict[str, list] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return streams
        for out in engine.step():
            streams.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish")
