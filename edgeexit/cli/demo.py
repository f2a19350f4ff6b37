"""`edgeexit demo`: train, export, profile, calibrate and bench, end to end (no download)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from edgeexit.cli import params
from edgeexit.cli.core import command, in_flags, show, usage_error
from edgeexit.cli.progress import progress
from edgeexit.files import dumps_json


@command("demo")
def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "-o", "--out", parser=params.output_path, help="Where to write files."
    ),
    model: Path = typer.Option(None, help="Your checkpoint (edgeexit.save) instead of digits."),
    data: Path = typer.Option(None, help="Calibration data .npz (x, y) for --model."),
    test_data: Path = typer.Option(None, help="Held-out .npz to bench on (default: --data)."),
    epochs: int = typer.Option(6, min=1, help="Training epochs for the digits example."),
    max_accuracy_drop: float = typer.Option(
        "0.01",
        parser=params.accuracy_drop,
        metavar="DROP",
        help="Budget: accuracy given up, 0.01 or 1pp.",
    ),
    target_latency: float = typer.Option(
        None, parser=params.latency_ms, metavar="TIME", help="Budget instead: mean latency."
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    profile_repeats: int = typer.Option(100, min=1, help="Timed calls per segment profiling."),
    trust_pickle: bool = typer.Option(False, help="--model is a pickled nn.Module you trust."),
    generate: bool = typer.Option(
        False, "--generate", help="The text-generation demo instead: a byte-level decoder."
    ),
    steps: int = typer.Option(
        None, min=1, help="--generate: training steps (cached); the demo's own 900 if not given."
    ),
    denoise: bool = typer.Option(
        False,
        "--denoise",
        help="The image demo instead: a denoiser whose exits give images, calibrated to "
        "--max-quality-drop.",
    ),
    max_quality_drop: float = typer.Option(
        0.5, min=0.0, metavar="DB", help="--denoise: PSNR the calibrated bundle may lose, dB."
    ),
    tokens: bool = typer.Option(
        False,
        "--tokens",
        help="The per-token demo instead: a token tagger whose tokens leave at their own "
        "exits, calibrated to 98 % per-token agreement with the full model.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Train a three-exit CNN on noisy digits, export, profile, calibrate and bench it.

    Prints the full model against the calibrated bundle (accuracy, latency, speed-up), the
    exit histogram and energy with its source, and writes the Pareto front as a PNG. The
    output folder must be new, empty, or an earlier demo's. Needs the export extra (torch).

    Examples:

        edgeexit demo

        edgeexit demo -o /tmp/demo --epochs 2 --target-latency 0.05ms

        edgeexit demo --model model.pt --data cal.npz --test-data test.npz

        edgeexit demo --generate        # early-exit text generation, trained on stdlib code

        edgeexit demo --denoise         # exits that give images, a PSNR budget

        edgeexit demo --tokens          # per-token exits: each token leaves on its own
    """
    if generate:
        _generation_demo(out, steps, as_json)
        return
    if denoise:
        _denoise_demo(out, epochs, max_quality_drop, as_json)
        return
    if tokens:
        _token_demo(out, as_json)
        return
    from edgeexit.errors import InputError
    from edgeexit.examples.demo import DemoOptions, run_demo  # torch is imported there

    try:
        options = DemoOptions(
            out_dir=out, model=model, data=data, test_data=test_data, epochs=epochs,
            max_accuracy_drop=max_accuracy_drop, target_latency_ms=target_latency,
            target=target, profile_repeats=profile_repeats, trust_pickle=trust_pickle,
        )  # fmt: skip
    except InputError as err:  # options that do not go together
        raise usage_error(f"{err} (see 'edgeexit demo --help')") from None
    _run_and_show(lambda progress: run_demo(options, progress=progress), as_json)


def _run_and_show(run: Callable[[Any], Any], as_json: bool) -> None:
    """Run a demo with progress on stderr, then print its report."""
    with progress("demo", kept="the demo's folder keeps the steps that finished",
                  for_script=as_json) as tell:  # fmt: skip
        report = run(tell)
    if as_json:
        typer.echo(in_flags(dumps_json(report.to_json())))
        return
    show(report)


def _denoise_demo(out: Path, epochs: int, max_quality_drop: float, as_json: bool) -> None:
    from edgeexit.examples.denoise import run_denoise_demo  # imports torch

    def run(progress):
        return run_denoise_demo(
            out, max_quality_drop=max_quality_drop, epochs=epochs, progress=progress
        )

    _run_and_show(run, as_json)


def _token_demo(out: Path, as_json: bool) -> None:
    from edgeexit.examples.tokens import run_token_demo  # imports torch

    _run_and_show(lambda progress: run_token_demo(out, progress=progress), as_json)


def _generation_demo(out: Path, steps: int | None, as_json: bool) -> None:
    from edgeexit.examples.generation_demo import STEPS, run_generation_demo  # imports torch

    chosen = STEPS if steps is None else steps
    _run_and_show(lambda progress: run_generation_demo(out, steps=chosen, progress=progress),
                  as_json)  # fmt: skip
