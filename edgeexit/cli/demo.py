"""`edgeexit demo`: a short end-to-end on the bundled digits (no download)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.cli.app import command


@command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "-o", "--out", help="Where to write files."),
    epochs: int = typer.Option(6, help="Training epochs (a few seconds on one CPU core)."),
) -> None:
    """Train a multi-exit ResNet on the bundled 8x8 digits, export it, score every exit.

    Needs the export extra (torch). Examples:

        edgeexit demo

        edgeexit demo -o /tmp/demo --epochs 2
    """
    from edgeexit.examples.demo import run_demo  # torch is imported there, not here

    console = Console()
    with console.status("demo") as status:
        report = run_demo(out, epochs=epochs, progress=lambda step: status.update(step))
    console.print(report)
