"""The ``edgeexit`` command line.

This module stays import-light: ``main`` loads the application inside its own guard, so a
Ctrl-C while onnxruntime or numpy are still loading exits 130 without a traceback.
``edgeexit.cli.app`` is the typer application (resolved on first access).
"""

from __future__ import annotations

import sys
from typing import Any

EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from edgeexit.cli.commands import app  # registers every command

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


def __getattr__(name: str) -> Any:
    if name == "app":
        from edgeexit.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
