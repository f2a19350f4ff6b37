"""`edgeexit calibrate BUNDLE --data D.npz --target-latency 4ms`: thresholds to a budget."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgeexit.calibrate import Budget
from edgeexit.calibrate.pipeline import CalibrateOptions, calibrate_bundle
from edgeexit.cli.app import command, stage_progress


@command("calibrate")
def calibrate_cmd(
    bundle: Path = typer.Argument(..., help="The bundle directory to calibrate."),
    data: Path = typer.Option(..., "--data", help="Calibration data .npz (x, optional y)."),
    target_latency: str = typer.Option(None, help="Mean latency cap, e.g. 4ms, 800us."),
    target_p95_latency: str = typer.Option(None, help="p95 latency cap, e.g. 6ms."),
    target_energy: str = typer.Option(None, help="Energy cap per sample, e.g. 2mJ, 1.5J."),
    max_accuracy_drop: float = typer.Option(
        None, help="Fastest thresholds losing at most this fraction (0.01 = 1 pp)."
    ),
    risk: float = typer.Option(None, help="Guarantee mode: risk bound, e.g. 0.02."),
    confidence: float = typer.Option(0.9, help="Guarantee mode: confidence, e.g. 0.9."),
    risk_metric: str = typer.Option("disagreement", help="disagreement (with final) or error."),
    profile: Path = typer.Option(None, help="Device profile JSON from `edgeexit profile`."),
    target: str = typer.Option(None, help="Target name or .toml (default: this host)."),
    plot: Path = typer.Option(None, help="Save the Pareto front as a PNG (needs matplotlib)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Do not write the manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Search per-exit thresholds that meet a budget, and write them into the bundle.

    Examples:

        edgeexit calibrate bundle/ --data cal.npz --target-latency 4ms --profile rpi5.json

        edgeexit calibrate bundle/ --data cal.npz --max-accuracy-drop 0.01 --plot pareto.png

        edgeexit calibrate bundle/ --data cal.npz --risk 0.02 --confidence 0.9
    """
    budget = Budget.from_strings(
        latency=target_latency,
        p95_latency=target_p95_latency,
        energy=target_energy,
        max_accuracy_drop=max_accuracy_drop,
        risk=risk,
        confidence=confidence,
        risk_metric=risk_metric,
    )
    options = CalibrateOptions(profile=profile, target=target)
    with stage_progress(hidden=as_json) as advance:
        report = calibrate_bundle(
            bundle, data, budget, options, progress=advance, write=not dry_run
        )
    if plot is not None:
        report.save_plot(plot)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    Console().print(report)
