"""`fleetserve` command line: one typer app composed of one module per concept.

This file is the glue only: it lists the commands (in ``--help`` order), adds ``--version``
and shell completion, and turns errors into exit codes in :func:`main`.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import typer
from typer.core import TyperGroup

from fleetserve import __version__
from fleetserve.cli import (ab, adapters, drain, model, replicas, rollout, scale, serve, simulate, status, tenants, usage,
                            versions, watch_nodes)
from fleetserve.cli.console import print_error
from fleetserve.cli.errors import report

try:  # typer >= 0.2x vendors click; there is no public name for its base exception
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - typer that still depends on click
    from click.exceptions import ClickException

PROG = "fleetserve"
# `fleetserve --help` order. Owners: serve/status (serving), tenants/usage (multi-tenancy),
# model (engine), simulate (autoscaler), watch-nodes (kube).
COMMAND_ORDER = ("serve", "status", "scale", "replicas", "drain", "tenants", "usage", "model", "adapters", "versions", "rollout",
                 "ab", "simulate", "watch-nodes")


class _OrderedGroup(TyperGroup):
    """Lists commands in COMMAND_ORDER (typer would list single commands before groups)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))


app = typer.Typer(name=PROG, cls=_OrderedGroup, help="Multi-tenant LLM serving on Ray Serve.", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]})

app.command("serve", rich_help_panel="Serving")(serve.serve)
app.command("status", rich_help_panel="Serving")(status.status)
app.command("scale", rich_help_panel="Scaling")(scale.scale)
app.command("replicas", rich_help_panel="Scaling")(replicas.replicas)
app.command("drain", rich_help_panel="Scaling")(drain.drain)
app.add_typer(tenants.app, name="tenants", rich_help_panel="Tenants")
app.command("usage", rich_help_panel="Tenants")(usage.usage)
app.add_typer(model.app, name="model", rich_help_panel="Models")
app.add_typer(adapters.app, name="adapters", rich_help_panel="Models")
app.add_typer(versions.app, name="versions", rich_help_panel="Models")
app.add_typer(rollout.app, name="rollout", rich_help_panel="Models")
app.add_typer(ab.app, name="ab", rich_help_panel="Models")
app.command("simulate", rich_help_panel="Autoscaling")(simulate.simulate)
app.command("watch-nodes", rich_help_panel="Kubernetes")(watch_nodes.watch_nodes)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Multi-tenant LLM serving on Ray Serve."""


def build_command():
    """The click command behind the app (what ``main`` runs; tests parse args with it)."""
    return typer.main.get_command(app)


def parse_args(argv: Sequence[str]) -> list:
    """Parse ``argv`` down to the leaf command without running anything; returns the contexts.

    Raises the CLI's usage error (exit code 2) on an unknown command, flag or bad value, as
    running the command would. Used to check what the Helm chart passes.
    """
    cmd, args, parent, contexts = build_command(), list(argv), None, []
    name = PROG
    while True:
        ctx = cmd.make_context(name, args, parent=parent)
        contexts.append(ctx)
        rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else [*ctx.protected_args, *ctx.args]
        if not hasattr(cmd, "resolve_command") or not rest:
            return contexts
        name, cmd, args = cmd.resolve_command(ctx, rest)
        parent = ctx


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry: run the CLI, return its exit code (never a traceback for
    usage errors, admin API errors, config errors or a failed deploy)."""
    try:
        rv = build_command().main(args=list(sys.argv[1:] if argv is None else argv), prog_name=PROG,
                                  standalone_mode=False)
    except ClickException as exc:
        from typer import rich_utils

        # Usage line, "Try --help", the message in a panel. A group run without a subcommand
        # has printed its help already (exit code 2, as with argparse).
        rich_utils.rich_format_error(exc)
        return exc.exit_code
    except typer.Abort:
        print_error("Aborted!")
        return 1
    except SystemExit as exc:  # completion's --install/--show-completion exit this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        reported = report(exc)
        if reported is None:
            raise
        print_error(reported[0])
        return reported[1]
    return int(rv or 0)


if __name__ == "__main__":
    sys.exit(main())
