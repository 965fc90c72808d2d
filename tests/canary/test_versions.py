"""Checkpoint checksums on a real tiny checkpoint: stable, and a flipped byte is caught by name."""

import shutil

import pytest

from fleetserve.canary.errors import CheckpointError, ChecksumMismatchError
from fleetserve.canary.versions import (
    ModelVersion, VersionState, checksum, file_digests, make_version, verify, verify_version,
)


@pytest.fixture
def ckpt(tiny_llama_path, tmp_path):
    """A private copy of the session checkpoint: these tests corrupt files."""
    return shutil.copytree(tiny_llama_path, tmp_path / "ckpt")


def flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_checksum_counts_weights_config_and_tokenizer_files_only(ckpt):
    (ckpt / "README.md").write_text("a model card")
    names = set(file_digests(ckpt))
    assert names == {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json"}
    before = checksum(ckpt)
    (ckpt / "README.md").write_text("an edited model card")
    assert checksum(ckpt) == before and before.startswith("sha256:") and len(before) == 7 + 64


def test_checksum_is_stable_across_copies_and_listing_order(ckpt, tmp_path):
    other = shutil.copytree(ckpt, tmp_path / "other")
    assert checksum(ckpt) == checksum(other)
    verify(other, checksum(ckpt))


def test_one_flipped_byte_in_the_weights_is_a_mismatch_naming_the_version_and_file(ckpt):
    v = make_version("llama-tiny", "v2", ckpt)
    verify_version(v)
    flip_byte(ckpt / "model.safetensors")
    with pytest.raises(ChecksumMismatchError) as ei:
        verify_version(v)
    msg = str(ei.value)
    assert "llama-tiny@v2" in msg and v.checksum in msg and "changed: model.safetensors" in msg


def test_a_changed_config_or_a_renamed_file_is_a_mismatch(ckpt):
    expected = checksum(ckpt)
    (ckpt / "generation_config.json").rename(ckpt / "generation_config.json.bak")
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch for version m@v1"):
        verify(ckpt, expected, label="m@v1")
    (ckpt / "generation_config.json.bak").rename(ckpt / "generation_config.json")
    verify(ckpt, expected)
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")  # same bytes, new name
    with pytest.raises(ChecksumMismatchError):
        verify(ckpt, expected)
    (ckpt / "model-00001-of-00001.safetensors").rename(ckpt / "model.safetensors")
    flip_byte(ckpt / "config.json", offset=2)
    with pytest.raises(ChecksumMismatchError):
        verify(ckpt, expected)


def test_missing_or_empty_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        checksum(tmp_path / "nope")
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(CheckpointError, match="no weight"):
        checksum(tmp_path)


def test_version_record_round_trips_and_requires_a_reason_when_blocked(ckpt):
    v = make_version("m", "v1", ckpt, engine="vllm", engine_args={"max_model_len": 512})
    assert ModelVersion.from_dict(v.to_dict()) == v
    blocked = v.with_state(VersionState.BLOCKED, "checksum mismatch")
    assert ModelVersion.from_dict(blocked.to_dict()).blocked_reason == "checksum mismatch"
    with pytest.raises(ValueError, match="blocked_reason"):
        v.with_state(VersionState.BLOCKED)
    with pytest.raises(ValueError, match="blocked_reason"):
        v.with_state(VersionState.STABLE, "why")
