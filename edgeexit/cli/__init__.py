"""The ``edgeexit`` command line.

This module stays import-light: ``main`` loads the application with Ctrl-C held back
(``interrupts_deferred``), because an interrupt landing inside the initialisation of a
native module (onnxruntime, numpy, torch) is turned by that module into an ImportError
traceback. Held back, it arrives once the imports are done and exits 130 like any other.
Before ``main`` runs, ``edgeexit/__init__`` has seen to Ctrl-C while the package and this
module are imported.
``edgeexit.cli.app`` is the typer application (resolved on first access).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT back for the block (main thread, POSIX); a Ctrl-C pressed meanwhile is
    delivered when it ends. Elsewhere, a no-op."""
    block = getattr(signal, "pthread_sigmask", None)
    if block is None:  # pragma: no cover - Windows
        yield
        return
    previous = block(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        block(signal.SIG_SETMASK, previous)


def _interrupt_again(unraisable: Any) -> None:
    """``sys.unraisablehook``: a Ctrl-C that lands in code a native module called back
    (pydantic-core, which typer uses to parse options) is 'ignored' by that module, printed
    with a traceback, and the command goes on. Delivered again instead, from a thread a
    moment later (delivered now, it would land in this hook and be ignored again): it
    arrives once that module's code has returned, and exits 130 like any other."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        again = threading.Timer(0.05, _thread.interrupt_main)
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def main() -> None:
    sys.unraisablehook = _interrupt_again
    try:
        with interrupts_deferred():
            _take_over_from_start_up()
            from edgeexit.cli.commands import app  # registers every command

        code = app(standalone_mode=False)
    except KeyboardInterrupt as err:  # outside any command (a command says what it kept)
        kept = getattr(err, "kept", None)
        sys.stderr.write(f"interrupted: {kept}\n" if kept else "interrupted\n")
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        # CPython remembers a KeyboardInterrupt that passed through code a native module ran
        # (onnxruntime runs some), and after a normal shutdown kills itself with SIGINT:
        # exit status -2 instead of 130. Everything is cleaned up by now; leave directly.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _take_over_from_start_up() -> None:
    """Ctrl-C back to Python's KeyboardInterrupt, which every command turns into its one
    line: until now ``edgeexit``'s start-up handler left at once (``edgeexit/__init__``)."""
    import edgeexit

    if signal.getsignal(signal.SIGINT) is edgeexit._leave:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def __getattr__(name: str) -> Any:
    if name == "app":
        from edgeexit.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "interrupts_deferred", "main"]
