"""Progress on stderr for every command that takes a while, so that slow is told from hung.

A command wraps its slow work in ``progress(...)`` and hands the callback it yields
(``edgeexit.progress.Progress``) to the library. On a terminal that is a live bar per
stage with the time elapsed and left (rich); on any other stream that is a file (a log,
a pipe, CI) it is plain lines, never an ANSI code::

    export: validating segment 2/4, 12 s elapsed, ~8 s left

one when a stage starts, then one every few seconds while it runs (further apart as a
long run goes on), so a line that stops changing is a command that stopped. The first
comes after a second: a command that is done (or fails) sooner prints none. A stream
held in memory (a test runner's, an in-process caller's) gets no lines: a program reads
it once the command is over, nobody watches it. stdout keeps only the table or the JSON.
``-q`` silences it; under ``--json`` only a terminal shows it (a script that reads the
JSON reads no progress lines). A Ctrl-C inside becomes ``Interrupted``, whose one line
says what the command kept.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgeexit.progress import Progress as Callback
from edgeexit.progress import silent

FIRST_LINE_S = 1.0  # plain lines from then on,
FIRST_EVERY_S = 3.0  # this often at first,
LAST_EVERY_S = 30.0  # then further apart (a tenth of the time elapsed), up to this


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command, with what the command kept, for its one line."""

    def __init__(self, kept: str) -> None:
        super().__init__(kept)
        self.kept = kept


def interrupted_line(err: BaseException | None) -> str:
    """'interrupted: nothing written; bundle/ unchanged', or 'interrupted' if unknown."""
    kept = getattr(err, "kept", None)
    return f"interrupted: {kept}" if kept else "interrupted"


def unchanged(path: str | os.PathLike) -> str:
    """What an all-or-nothing write to ``path`` leaves when it is stopped: the old one,
    or none (a folder or file is written elsewhere and moved into place at the end)."""
    return f"{path} unchanged" if os.path.lexists(path) else f"{path} not created"


@contextlib.contextmanager
def progress(
    command: str, *, kept: str | Callable[[], str], for_script: bool = False
) -> Iterator[Callback]:
    """Yield the ``(stage, done, total)`` callback that shows ``command``'s progress.

    ``kept``: what a Ctrl-C leaves ("nothing written; bundle unchanged"), said in its line;
    or a function that tells it then (a command that writes step by step).
    ``for_script`` (``--json``): plain lines are left out; a terminal still gets the bar.
    """
    console = Console(stderr=True)
    terminal = console.is_terminal and not console.is_dumb_terminal
    if _quiet() or (for_script and not terminal):
        shown = contextlib.nullcontext(silent)
    elif terminal:
        shown = _bars(console)
    elif _is_file(sys.stderr):
        shown = _lines(command, sys.stderr)
    else:
        shown = contextlib.nullcontext(silent)
    try:
        with shown as advance:
            yield advance
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(kept if isinstance(kept, str) else kept()) from None


def _is_file(stream: IO[str]) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return True


def _quiet() -> bool:
    """Whether ``edgeexit -q`` was given (the root command's option)."""
    try:  # typer >= 0.22 carries its own click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on click
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("quiet"))


@contextlib.contextmanager
def _bars(console: Console) -> Iterator[Callback]:
    """A bar per stage, with its count, the time elapsed and the time left; gone at the end."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("elapsed"),
        TimeRemainingColumn(),
        TextColumn("left"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)

        yield advance


@dataclass
class _Stage:
    name: str
    done: int
    total: int
    since: float  # when it was first reported,
    done_then: int  # at this count: the rate is measured from there


class _Lines:
    """Plain progress lines on ``stream``: one as a stage starts, then from a ticker thread
    while it runs, so a stage that reports seldom (one long step) still shows time passing.
    A stream that can no longer be written (a closed pipe) ends the lines, not the work."""

    def __init__(self, command: str, stream: IO[str]) -> None:
        self.command, self.stream = command, stream
        self.start = self.last_line = time.monotonic()
        self.stage: _Stage | None = None
        self.written = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def advance(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            if self.stopped.is_set():
                return
            now = time.monotonic()
            if self.stage is None or self.stage.name != stage:
                self.stage = _Stage(stage, done, total, now, done)
                if now - self.start >= FIRST_LINE_S:
                    self._write(now)
            else:
                self.stage.done, self.stage.total = done, total

    def tick(self) -> None:
        while not self.stopped.wait(0.25):
            with self.lock:
                now = time.monotonic()
                elapsed = now - self.start
                every = min(max(FIRST_EVERY_S, elapsed / 10), LAST_EVERY_S)
                first = self.written == 0 and elapsed >= FIRST_LINE_S
                if self.stage is not None and (first or now - self.last_line >= every):
                    self._write(now)

    def _write(self, now: float) -> None:
        self.last_line, self.written = now, self.written + 1
        try:
            self.stream.write(f"{self.command}: {_line(self.stage, now, now - self.start)}\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or file: the work goes on, unreported
            self.stopped.set()
            self.stage = None


def _line(stage: _Stage, now: float, elapsed_s: float) -> str:
    """'validating segment 2/4, 12 s elapsed, ~8 s left' (the time left at this stage's
    rate so far; none before it has a rate)."""
    count = f" {stage.done}/{stage.total}" if stage.total else ""
    text = f"{stage.name}{count}, {_duration(elapsed_s)} elapsed"
    moved, took = stage.done - stage.done_then, now - stage.since
    if moved > 0 and stage.done < stage.total and took > 0:
        left = (stage.total - stage.done) * took / moved
        text += f", ~{_duration(left)} left"
    return text


def _duration(seconds: float) -> str:
    """'8 s', '2 min 05 s', '1 h 02 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@contextlib.contextmanager
def _lines(command: str, stream: IO[str]) -> Iterator[Callback]:
    shown = _Lines(command, stream)
    ticker = threading.Thread(target=shown.tick, name="edgeexit-progress", daemon=True)
    ticker.start()
    try:
        yield shown.advance
    finally:
        shown.stopped.set()
        ticker.join()
