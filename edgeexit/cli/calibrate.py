"""`edgeexit calibrate BUNDLE --data D.npz --target-latency 4ms`: thresholds to a budget."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeexit.budget import parse_quality_drop
from edgeexit.calibrate import Budget
from edgeexit.calibrate.pipeline import CalibrateOptions, calibrate_bundle
from edgeexit.cli import params
from edgeexit.cli.core import command, in_flags, show, usage_error
from edgeexit.cli.progress import progress
from edgeexit.errors import CalibrationError
from edgeexit.files import dumps_json


@command("calibrate")
def calibrate_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle directory to calibrate."),
    data: Path = typer.Option(..., "--data", help="Calibration data .npz (x, optional y)."),
    target_latency: float = typer.Option(
        None, parser=params.latency_ms, metavar="TIME", help="Mean latency cap, e.g. 4ms, 800us."
    ),
    target_p95_latency: float = typer.Option(
        None, parser=params.latency_ms, metavar="TIME", help="p95 latency cap, e.g. 6ms."
    ),
    target_energy: float = typer.Option(
        None, parser=params.energy_mj, metavar="ENERGY", help="Energy cap per sample, e.g. 2mJ."
    ),
    max_accuracy_drop: float = typer.Option(
        None,
        parser=params.accuracy_drop,
        metavar="DROP",
        help=f"Fastest thresholds losing at most this much accuracy: {params.DROP_FORMS}.",
    ),
    max_quality_drop: str = typer.Option(
        None,
        metavar="DROP",
        help="For exits that give images or other tensors: fastest thresholds whose mean "
        "quality falls at most this much, checked on a held-out half: 0.5dB of PSNR "
        "(against targets 'y' in the data) or 0.001mse (against 'y', or the last exit).",
    ),
    risk: float = typer.Option(
        None, parser=params.probability, metavar="P", help="Guarantee mode: risk bound, e.g. 0.02."
    ),
    confidence: float = typer.Option(
        0.9,
        parser=params.probability,
        metavar="P",
        help="Probability that every budget holds on new data (Learn-then-Test), e.g. 0.9.",
    ),
    risk_metric: params.RiskMetric = typer.Option(
        "disagreement", metavar="METRIC", help="disagreement (with the final exit) or error."
    ),
    profile: Path = typer.Option(None, help="Device profile JSON from `edgeexit profile`."),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    plot: Path = typer.Option(None, help="Save the Pareto front as a PNG (needs matplotlib)."),
    target_memory: float = typer.Option(
        None,
        parser=params.memory_mb,
        metavar="MEMORY",
        help="Cap the depth where the loaded segments fit, e.g. 64MB (needs --profile).",
    ),  # fmt: skip
    target_max_latency: float = typer.Option(
        None,
        parser=params.latency_ms,
        metavar="TIME",
        help="Peak latency: cap the depth where a call leaving at the cap takes at most "
        "this long (p95), e.g. 8ms (needs --profile).",
    ),  # fmt: skip
    max_exit: int = typer.Option(
        None,
        "--max-exit",
        min=0,
        help="Cap the depth: every sample leaves by this exit, and "
        "the device never loads the segments after it.",
    ),  # fmt: skip
    dry_run: bool = typer.Option(False, "--dry-run", help="Do not write the manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Search per-exit thresholds that meet a budget, and write them into the bundle.

    The manifest (and --plot) are written only once everything has succeeded; a second
    calibrate or export on the same bundle at the same time is refused.

    Examples:

        edgeexit calibrate bundle/ --data cal.npz --target-latency 4ms --profile rpi5.json

        edgeexit calibrate bundle/ --data cal.npz --max-accuracy-drop 0.01 --plot pareto.png

        edgeexit calibrate bundle/ --data cal.npz --risk 0.02 --confidence 0.9

        edgeexit calibrate bundle/ --data cal.npz --max-accuracy-drop 0.05 --max-exit 1

        edgeexit calibrate bundle/ --data cal.npz --target-max-latency 5ms --profile rpi5.json

        edgeexit calibrate denoise/ --data noisy_clean.npz --max-quality-drop 0.5dB
    """
    try:
        quality = (
            (None, "psnr") if max_quality_drop is None else parse_quality_drop(max_quality_drop)
        )
        budget = Budget(
            latency_ms=target_latency,
            p95_latency_ms=target_p95_latency,
            energy_mj=target_energy,
            max_accuracy_drop=max_accuracy_drop,
            risk=risk,
            confidence=confidence,
            risk_metric=params.RiskMetric(risk_metric).value,
            max_quality_drop=quality[0],
            quality_metric=quality[1],
        )
    except CalibrationError as err:  # no budget, or budgets that do not go together
        raise usage_error(f"{err} (see 'edgeexit calibrate --help')") from None
    options = CalibrateOptions(
        profile=profile, target=target, plot=plot, max_exit=max_exit,
        max_memory_mb=target_memory, max_latency_ms=target_max_latency,
    )  # fmt: skip
    kept = f"nothing written; {bundle} unchanged"
    with progress("calibrate", kept=kept, for_script=as_json) as tell:
        tell("loading the bundle and data", 0, 0)
        report = calibrate_bundle(bundle, data, budget, options, progress=tell, write=not dry_run)
    if as_json:
        typer.echo(in_flags(dumps_json(report.to_json())))
        return
    show(report)
