"""Terminal output for the CLI: rich tables, and errors as one red line on stderr.

Tables keep one row per line when stdout is not a terminal (a pipe, a test's capture), so
``grep``/``awk`` on ``fleetserve tenants list`` keep working: rich would otherwise fold
them to 80 columns.
"""

from __future__ import annotations

import io
from typing import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Wide enough for any row we print; a table is only as wide as its cells need.
PIPE_WIDTH = 10_000


def stdout_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def print_error(message: str) -> None:
    """One red line on stderr (several when the message has them), never wrapped or marked up."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(message, style="red"))


def make_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """Borderless columns, first column flush left: reads like ``ps`` and splits on spaces."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for h in headers:
        table.add_column(h, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(str(v)) for v in row))  # Text: no markup in tenant ids or models
    return table


def print_table(table: Table) -> None:
    stdout_console().print(table)


def render_plain(table: Table) -> str:
    """The table as plain text (no colour), trailing spaces stripped."""
    buf = io.StringIO()
    Console(file=buf, width=PIPE_WIDTH, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())
