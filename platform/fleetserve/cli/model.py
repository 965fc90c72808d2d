"""``fleetserve model ...``: checkpoint utilities (``make-tiny``)."""

from __future__ import annotations

from typing import Literal, Optional

import typer

app = typer.Typer(help="Model checkpoint utilities.", no_args_is_help=True)


@app.command("make-tiny")
def make_tiny(
    dir: str = typer.Argument(..., metavar="DIR", help="Output directory (created if missing)."),
    preset: Literal["tiny", "small", "100m"] = typer.Option("tiny", help="Model size (tiny: about 4M params)."),
    arch: Literal["llama", "qwen2", "mistral"] = typer.Option("llama", help="Architecture."),
    num_kv_heads: Optional[int] = typer.Option(None, help="KV heads (GQA); default: MHA for llama, preset GQA for qwen2/mistral."),
) -> int:
    """Write a deterministic tiny Hugging Face-format checkpoint (random weights, BPE tokenizer)."""
    from fleetserve.engine.model.tiny import count_parameters, make_tiny_checkpoint

    path = make_tiny_checkpoint(dir, preset=preset, arch=arch, num_kv_heads=num_kv_heads)
    print(f"wrote {arch} {preset} checkpoint ({count_parameters(path):,} parameters) to {path}")
    return 0
