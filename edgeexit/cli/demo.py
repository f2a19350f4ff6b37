"""`edgeexit demo`: train, export, profile, calibrate and bench, end to end (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgeexit.cli.app import command, stage_progress


@command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "-o", "--out", help="Where to write files."),
    model: Path = typer.Option(None, help="Your checkpoint (edgeexit.save) instead of digits."),
    data: Path = typer.Option(None, help="Calibration data .npz (x, y) for --model."),
    test_data: Path = typer.Option(None, help="Held-out .npz to bench on (default: --data)."),
    epochs: int = typer.Option(6, help="Training epochs for the digits example."),
    max_accuracy_drop: float = typer.Option(0.01, help="Budget: accuracy given up (0.01=1pp)."),
    target_latency: str = typer.Option(None, help="Budget instead: mean latency, e.g. 0.1ms."),
    target: str = typer.Option(None, "--target", "-t", help="Target name or .toml profile."),
    profile_repeats: int = typer.Option(100, help="Timed calls per segment when profiling."),
    trust_pickle: bool = typer.Option(False, help="--model is a pickled nn.Module you trust."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Train a multi-exit ResNet on the bundled digits, export, profile, calibrate and bench it.

    Prints the full model against the calibrated bundle (accuracy, latency, speed-up), the
    exit histogram and energy with its source, and writes the Pareto front as a PNG.
    Needs the export extra (torch).

    Examples:

        edgeexit demo

        edgeexit demo -o /tmp/demo --epochs 2 --target-latency 0.05ms

        edgeexit demo --model model.pt --data cal.npz --test-data test.npz
    """
    from edgeexit.examples.demo import DemoOptions, run_demo  # torch is imported there

    options = DemoOptions(
        out_dir=out, model=model, data=data, test_data=test_data, epochs=epochs,
        max_accuracy_drop=max_accuracy_drop, target_latency=target_latency, target=target,
        profile_repeats=profile_repeats, trust_pickle=trust_pickle,
    )  # fmt: skip
    with stage_progress(hidden=as_json) as advance:
        report = run_demo(options, progress=advance)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    Console().print(report)
