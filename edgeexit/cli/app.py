"""The typer application and the one place where errors become one-line messages.

Commands are thin: parse, call the library, render. Each lives in its own module in this
package and registers itself with ``@command``. Exit codes: 0 ok, 1 failure, 2 usage error.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeexit.errors import EdgeExitError

app = typer.Typer(
    name="edgeexit",
    help="Deploy multi-exit (early-exit) networks to edge devices as chained ONNX segments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def fail(message: str) -> typer.Exit:
    """Print one line to stderr; return the Exit to raise (code 1)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def command(*args: Any, **kwargs: Any) -> Callable:
    """``app.command`` that turns any EdgeExitError into one line and exit code 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except EdgeExitError as err:
                raise fail(str(err).splitlines()[0] if str(err) else type(err).__name__) from None

        return app.command(*args, **kwargs)(wrapper)

    return register


@contextlib.contextmanager
def stage_progress(*, hidden: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars on stderr, so stdout holds only the table or the JSON.

    Yields ``advance(stage, done, total)``: each new stage name gets a bar of its own.
    ``hidden`` (for ``--json``) keeps the terminal quiet.
    """
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=hidden) as bar:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield advance


@app.callback()
def _root() -> None:
    """Deploy multi-exit (early-exit) networks to edge devices as chained ONNX segments.

    Pipeline: `export` a model.pt to a bundle, `profile` it on the device, `calibrate` its
    exit thresholds to a budget, then `run` or `bench` it on the device.
    """
