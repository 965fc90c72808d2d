"""Which exceptions the CLI reports as one line (no traceback), and with which exit code.

Commands raise :class:`CLIError` for failures they expect (an unreachable server, a failed
deploy); :func:`report` maps those and the package's typed errors once, in ``main``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Optional

from fleetserve.errors import ConfigError, FleetserveError


class CLIError(Exception):
    """An expected failure: print ``prefix + message`` and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1, prefix: str = "error: "):
        super().__init__(message)
        self.message, self.exit_code, self.prefix = message, exit_code, prefix


def report(exc: BaseException) -> Optional[tuple[str, int]]:
    """(line to print, exit code) for an error the CLI reports without a traceback, else None."""
    if isinstance(exc, CLIError):
        return exc.prefix + exc.message, exc.exit_code
    if isinstance(exc, ConfigError):  # a bad file or flag value: a usage error, as argparse's
        return f"error: {exc}", 2
    if isinstance(exc, FleetserveError):
        return f"error: {exc}", 1
    httpx = sys.modules.get("httpx")  # imported by the commands that talk HTTP, not by --help
    if httpx is not None and isinstance(exc, httpx.HTTPError):
        return f"error: HTTP request failed: {exc}", 1
    return None
