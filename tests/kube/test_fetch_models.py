"""The chart's model download step (hub repositories into the pod's model volume)."""

from __future__ import annotations

from pathlib import Path

from fleetserve.kube import fetch_models


def test_fetch_places_each_repo_under_its_name(tmp_path):
    calls = []

    def download(repo, **kwargs):
        calls.append((repo, kwargs))

    dirs = fetch_models.fetch(["Qwen/Qwen2.5-1.5B-Instruct", "meta-llama/Llama-3.1-8B/"], tmp_path, False, "hf_x", download)
    assert dirs == [tmp_path / "Qwen2.5-1.5B-Instruct", tmp_path / "Llama-3.1-8B"]
    assert calls[0] == ("Qwen/Qwen2.5-1.5B-Instruct", {"local_dir": tmp_path / "Qwen2.5-1.5B-Instruct",
                                                      "allow_patterns": None, "token": "hf_x"})


def test_tokenizer_only_takes_what_the_ingress_reads(tmp_path):
    calls = []
    fetch_models.fetch(["org/m"], tmp_path, True, None, lambda repo, **kw: calls.append(kw))
    patterns = calls[0]["allow_patterns"]
    from fnmatch import fnmatch

    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
        assert any(fnmatch(name, p) for p in patterns), name
    for name in ("model.safetensors", "model-00001-of-00004.safetensors", "pytorch_model.bin"):
        assert not any(fnmatch(name, p) for p in patterns), name


def test_chart_checkpoint_paths_match_download_dirs():
    import yaml

    values = yaml.safe_load((Path(__file__).parents[2] / "helm" / "fleetserve" / "values.yaml").read_text())
    storage = values["modelStorage"]
    dirs = {str(fetch_models.local_dir(Path(storage["mountPath"]), r)) for r in storage["huggingFace"]}
    assert {m["checkpoint"] for m in values["fleet"]["models"]} <= dirs
