"""`fleetserve` command line. Each subcommand lives in its own module with a
``register(subparsers)`` function; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Optional, Sequence

# Owned by: model (engine), serve/status (serving), tenants/usage (multi-tenancy),
# simulate (autoscaler). Order is the order shown in --help.
SUBCOMMAND_MODULES = (
    "fleetserve.cli.serve",
    "fleetserve.cli.status",
    "fleetserve.cli.model",
    "fleetserve.cli.tenants",
    "fleetserve.cli.usage",
    "fleetserve.cli.simulate",
    "fleetserve.cli.watch_nodes",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetserve", description="Multi-tenant LLM serving on Ray Serve.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue  # subcommand not part of this build yet
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
