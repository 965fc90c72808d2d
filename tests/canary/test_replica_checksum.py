"""A replica verifies its version's checkpoint before loading anything and refuses a mismatch."""

from __future__ import annotations

import functools

import pytest

from fleetserve.canary.errors import ChecksumMismatchError
from fleetserve.canary.versions import make_version, verify
from fleetserve.config import ModelConfig
from fleetserve.deployments.replica import ModelReplica


class NoEngine(Exception):
    pass


def refuse_engine(cfg):
    raise NoEngine("the checksum passed; the engine would load now")


async def start(version) -> None:
    cfg = ModelConfig(name="m", checkpoint=version.checkpoint)
    replica = ModelReplica.__new__(ModelReplica)
    check = functools.partial(verify, version.checkpoint, version.checksum, label=version.label,
                              expected_files=dict(version.files))
    await replica.__init__(cfg.model_dump(mode="json"), refuse_engine, verify_checkpoint=check)


async def test_matching_checkpoint_loads_and_a_flipped_byte_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    version = make_version("m", "v2", tmp_path)
    with pytest.raises(NoEngine):
        await start(version)
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ChecksumMismatchError, match=r"m@v2 .*changed: model.safetensors"):
        await start(version)
