"""`edgeexit bench BUNDLE --data D.npz`: measure a bundle as deployed, against the full chain."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.calibrate.bench import BenchOptions, bench_bundle
from edgeexit.cli import params
from edgeexit.cli.core import command, stage_progress
from edgeexit.files import dumps_json


@command("bench")
def bench_cmd(
    bundle: Path = typer.Argument(..., help="The bundle directory."),
    data: Path = typer.Option(..., "--data", help="Data .npz (x, optional labels y)."),
    batch: int = typer.Option(
        1, "--batch", min=1, help="Samples per call (per-sample latency = call's)."
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    rounds: int = typer.Option(
        5, "--rounds", min=1, help="Passes over the data (medians of rounds)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Run the bundle with its thresholds and report accuracy, exits, latency, energy, speed-up.

    The speed-up is measured against running every segment, alternating in the same run.

    Examples:

        edgeexit bench bundle/ --data test.npz

        edgeexit bench bundle/ --data test.npz --batch 32 --target rpi5 --json
    """
    options = BenchOptions(batch_size=batch, target=target, rounds=rounds)
    with stage_progress(hidden=as_json) as advance:
        report = bench_bundle(
            bundle, data, options, progress=lambda done, n: advance("bench", done, n)
        )
    if as_json:
        typer.echo(dumps_json(report.to_json()))
        return
    Console().print(report)
