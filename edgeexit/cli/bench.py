"""`edgeexit bench BUNDLE --data D.npz`: measure a bundle as deployed, against the full chain."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.bundle import read_manifest
from edgeexit.cli import params
from edgeexit.cli.core import command, fail
from edgeexit.cli.progress import progress
from edgeexit.errors import CalibrationError
from edgeexit.files import dumps_json
from edgeexit.measure.bench import BenchOptions, bench_bundle


@command("bench")
def bench_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle directory."),
    data: Path = typer.Option(..., "--data", help="Data .npz (x, optional labels y)."),
    batch: int = typer.Option(
        1,
        "--batch-size",
        "-b",
        "--batch",
        min=1,
        help="Samples per call (per-sample latency = call's).",
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    rounds: int = typer.Option(
        5, "--rounds", min=1, help="Passes over the data (medians of rounds)."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Exit 1 if a calibrated budget is missed or the bundle is slower than the full "
        "model (its whole 95% interval below 1x).",
    ),
    server: str = params.server_option(),
    timeout_s: float = params.timeout_option(),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Run the bundle with its thresholds and report accuracy, exits, latency, energy, speed-up,
    and whether the budget it was calibrated to holds on this (held-out) data.

    The speed-up is measured against running every segment, alternating in the same run.
    Each budget gets a verdict: met or MISSED, its margin and a 95 % interval. A speed-up
    below 1x, or calibrate's prediction more than 10 % off, is flagged in words. With
    --check, a missed budget or a bundle surely slower than the full model exits 1 (for a
    deployment's CI). With --server, a split bundle runs as deployed: the share of samples
    sent to the server, and of those it did not answer in time (degraded), are reported.

    Examples:

        edgeexit bench bundle/ --data test.npz

        edgeexit bench bundle/ --data test.npz --check     # in CI: fails on a missed budget

        edgeexit bench bundle/ --data test.npz --batch-size 32 --target rpi5 --json

        edgeexit bench split/ --data test.npz --server http://127.0.0.1:8000/edgeexit
    """
    options = BenchOptions(batch_size=batch, target=target, rounds=rounds, server=server,
                           timeout_s=timeout_s)  # fmt: skip
    if check and not read_manifest(bundle).extra.get("calibration"):
        raise CalibrationError(
            f"--check: {bundle} was never calibrated, so there is no budget to check; "
            "run edgeexit calibrate first"
        )
    with progress("bench", kept="nothing written", for_script=as_json) as tell:
        tell("loading the bundle", 0, 0)
        report = bench_bundle(
            bundle, data, options, progress=lambda done, n: tell("benchmarking", done, n)
        )
    if as_json:
        typer.echo(dumps_json(report.to_json()))
    else:
        Console().print(report)
    if check and not report.passed:
        raise fail(f"bench --check failed: {_why(report)}")


def _why(report) -> str:
    missed = [c.name for c in report.checks if not c.met]
    if missed:
        return f"budget missed on this data ({', '.join(missed)})"
    low, high = report.speedup_ci
    return (
        f"the calibrated bundle is slower than the full model ({report.speedup:.2f}x, "
        f"95% CI {low:.2f}-{high:.2f}x)"
    )
