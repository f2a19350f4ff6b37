"""`edgeexit bench BUNDLE --data D.npz`: measure a bundle as deployed, against the full chain."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress

from edgeexit.calibrate.bench import BenchOptions, bench_bundle
from edgeexit.cli.app import command


@command("bench")
def bench_cmd(
    bundle: Path = typer.Argument(..., help="The bundle directory."),
    data: Path = typer.Option(..., "--data", help="Data .npz (x, optional labels y)."),
    batch: int = typer.Option(1, "--batch", help="Samples per call (per-sample latency = call's)."),
    target: str = typer.Option(None, help="Target name or .toml (default: this host)."),
    rounds: int = typer.Option(5, "--rounds", help="Passes over the data (medians of rounds)."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Run the bundle with its thresholds and report accuracy, exits, latency, energy, speed-up.

    The speed-up is measured against running every segment, alternating in the same run.

    Examples:

        edgeexit bench bundle/ --data test.npz

        edgeexit bench bundle/ --data test.npz --batch 32 --target rpi5 --json
    """
    options = BenchOptions(batch_size=batch, target=target, rounds=rounds)
    # The bar goes to stderr, so stdout holds only the table or the JSON.
    with Progress(console=Console(stderr=True), transient=True, disable=as_json) as bar:
        task = bar.add_task("bench", total=None)
        report = bench_bundle(
            bundle,
            data,
            options,
            progress=lambda done, n: bar.update(task, completed=done, total=n),
        )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    Console().print(report)
