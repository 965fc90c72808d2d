"""The sampled prediction logger: off by default, rate per variant, opt-out, JSONL and Redis sinks."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fleetserve.canary.ab_config import PredictionLogConfig
from fleetserve.canary.prediction_log import JsonlSink, PredictionLogger, PredictionRecord, sampled


def record(rid: str = "r1", version: str = "v2") -> PredictionRecord:
    return PredictionRecord(rid, "acme", "m", version, 1.0, "200", [[1, 2, 3]], ["hello"])


def test_off_by_default():
    log = PredictionLogger.from_config(PredictionLogConfig())
    assert not any(log.wants(f"r{i}", "v1", opted_out=False) for i in range(1000))


def test_rate_per_variant_and_opt_out(tmp_path):
    cfg = PredictionLogConfig(enabled=True, sample_rate=0.01, version_rates={"v2": 0.2}, directory=str(tmp_path))
    log = PredictionLogger.from_config(cfg)
    ids = [f"req-{i}" for i in range(20000)]
    stable = sum(log.wants(r, "v1", False) for r in ids) / len(ids)
    canary = sum(log.wants(r, "v2", False) for r in ids) / len(ids)
    assert 0.007 < stable < 0.013 and 0.19 < canary < 0.21
    assert not any(log.wants(r, "v2", opted_out=True) for r in ids)
    assert sampled("x", 1.0) and not sampled("x", 0.0) and sampled("abc", 0.5) == sampled("abc", 0.5)


async def test_jsonl_sink_appends_one_file_per_variant(tmp_path):
    log = PredictionLogger(PredictionLogConfig(enabled=True), JsonlSink(str(tmp_path)))
    await log.log(record("r1", "v2"))
    await log.log(record("r2", "v2"))
    await log.log(record("r3", "v1"))
    lines = (tmp_path / "m@v2.jsonl").read_text().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["r1", "r2"]
    assert json.loads(lines[0])["prompt_token_ids"] == [[1, 2, 3]] and (tmp_path / "m@v1.jsonl").exists()


def test_config_validates_rates_and_needs_redis_for_a_stream():
    with pytest.raises(ValidationError, match="version_rates"):
        PredictionLogConfig(version_rates={"v2": 1.5})
    with pytest.raises(ValidationError):
        PredictionLogConfig(sampel_rate=0.1)
    with pytest.raises(ValueError, match="redis_stream"):
        PredictionLogger.from_config(PredictionLogConfig(enabled=True, sink="redis_stream"))


@pytest.mark.redis
async def test_redis_stream_sink(redis_url):
    import redis.asyncio as aioredis

    cfg = PredictionLogConfig(enabled=True, sink="redis_stream", stream_key="preds", stream_maxlen=100)
    log = PredictionLogger.from_config(cfg, redis_url)
    r = aioredis.from_url(redis_url)
    try:
        await log.log(record("r9"))
        entries = await r.xrange("preds")
        assert len(entries) == 1 and json.loads(entries[0][1][b"record"])["request_id"] == "r9"
    finally:
        await log.close()
        await r.aclose()
