"""A sampled log of requests and their outputs, per variant: JSON lines files or a Redis stream.

Off by default (``canary.prediction_log``). The decision is a hash of the request id against
the variant's rate, so it is reproducible and needs no random state; it is taken once the
version is chosen (stage 3), and a tenant flagged ``prediction_log_opt_out`` is never
sampled, so its prompts never reach the request's capture buffers, let alone a sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Protocol

import redis.asyncio as aioredis

from fleetserve.canary.ab_config import PredictionLogConfig
from fleetserve.tenants.store import make_redis_client


@dataclass(frozen=True)
class PredictionRecord:
    """One logged request: token ids of each prompt, text of each choice, and its outcome."""

    request_id: str
    tenant: str
    model: str
    version: str
    ts: float
    status: str
    prompt_token_ids: list[list[int]]
    outputs: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def sampled(request_id: str, rate: float) -> bool:
    """True for about ``rate`` of all request ids (a hash, so the same id always decides alike)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return h / 2 ** 64 < rate


class PredictionSink(Protocol):
    async def write(self, record: PredictionRecord) -> None: ...

    async def close(self) -> None: ...


class JsonlSink:
    """Appends to ``<directory>/<model>@<version>.jsonl`` (names made file-safe)."""

    def __init__(self, directory: str) -> None:
        self._dir = Path(directory)

    def path_for(self, model: str, version: str) -> Path:
        return self._dir / (re.sub(r"[^A-Za-z0-9._@-]", "_", f"{model}@{version}") + ".jsonl")

    async def write(self, record: PredictionRecord) -> None:
        await asyncio.to_thread(self._append, self.path_for(record.model, record.version), record.to_json())

    def _append(self, path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def close(self) -> None:
        return None


class RedisStreamSink:
    """``XADD <key> MAXLEN ~ <maxlen> * model .. version .. record <json>``."""

    def __init__(self, client: aioredis.Redis, key: str, maxlen: int) -> None:
        self._r, self._key, self._maxlen = client, key, maxlen

    @classmethod
    def from_url(cls, url: str, key: str, maxlen: int) -> "RedisStreamSink":
        return cls(make_redis_client(url, 0.5), key, maxlen)

    async def write(self, record: PredictionRecord) -> None:
        await self._r.xadd(self._key, {"model": record.model, "version": record.version, "record": record.to_json()},
                           maxlen=self._maxlen, approximate=True)

    async def close(self) -> None:
        await self._r.aclose()


class PredictionLogger:
    """Decides per request (:meth:`wants`) and writes sampled ones (:meth:`log`)."""

    def __init__(self, config: PredictionLogConfig, sink: Optional[PredictionSink] = None) -> None:
        self.config = config
        self._sink = sink

    @classmethod
    def from_config(cls, config: PredictionLogConfig, redis_url: Optional[str] = None) -> "PredictionLogger":
        if not config.enabled:
            return cls(config)
        if config.sink == "redis_stream":
            if not redis_url:
                raise ValueError("canary.prediction_log.sink: redis_stream needs canary.redis_url or tenants.redis_url")
            return cls(config, RedisStreamSink.from_url(redis_url, config.stream_key, config.stream_maxlen))
        return cls(config, JsonlSink(config.directory))

    def wants(self, request_id: str, version: str, opted_out: bool) -> bool:
        return self._sink is not None and not opted_out and sampled(request_id, self.config.rate_for(version))

    async def log(self, record: PredictionRecord) -> None:
        if self._sink is not None:
            await self._sink.write(record)

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.close()


