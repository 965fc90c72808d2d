"""``fleetserve model ...``: checkpoint utilities (``make-tiny``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="Model checkpoint utilities.")
    sub = parser.add_subparsers(dest="model_command", metavar="MODEL_COMMAND")
    make = sub.add_parser(
        "make-tiny",
        help="Write a deterministic tiny Hugging Face-format checkpoint (random weights, BPE tokenizer).",
    )
    make.add_argument("dir", help="Output directory (created if missing).")
    make.add_argument("--preset", choices=("tiny", "small", "100m"), default="tiny", help="Model size (default: tiny, about 4M params).")
    make.add_argument("--arch", choices=("llama", "qwen2", "mistral"), default="llama", help="Architecture (default: llama).")
    make.add_argument("--num-kv-heads", type=int, default=None, help="KV heads (GQA); default: MHA for llama, preset GQA for qwen2/mistral.")
    make.set_defaults(func=_make_tiny)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _make_tiny(args: argparse.Namespace) -> int:
    from fleetserve.engine.model.tiny import count_parameters, make_tiny_checkpoint

    path = make_tiny_checkpoint(args.dir, preset=args.preset, arch=args.arch, num_kv_heads=args.num_kv_heads)
    print(f"wrote {args.arch} {args.preset} checkpoint ({count_parameters(path):,} parameters) to {path}")
    return 0
