"""`edgeexit demo`: train, export, profile, calibrate and bench, end to end (no download).

Each variant writes its own folder (``FOLDERS``), leaves what the next command needs and
says which: ``next:``. ``--quick`` trains and measures less (each variant's ``QUICK``):
about a minute on a small, busy machine, with the verdict still checked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from edgeexit.cli import params
from edgeexit.cli.core import command, in_flags, show, usage_error
from edgeexit.cli.progress import progress, unchanged
from edgeexit.files import dumps_json
from edgeexit.progress import Progress

FOLDERS = {"digits": "demo-out", "generate": "demo-generate", "denoise": "demo-denoise",
           "tokens": "demo-tokens"}  # fmt: skip


@command("demo")
def demo_cmd(
    out: Path = typer.Option(
        None,
        "-o",
        "--out",
        parser=params.output_path,
        help="Where to write files (default: demo-out; demo-generate, demo-denoise or "
        "demo-tokens for those).",
    ),
    model: Path = typer.Option(None, help="Your checkpoint (edgeexit.save) instead of digits."),
    data: Path = typer.Option(None, help="Calibration data .npz (x, y) for --model."),
    test_data: Path = typer.Option(None, help="Held-out .npz to bench on (default: --data)."),
    quick: bool = typer.Option(
        False, "--quick", help="About a minute: less training and measuring, still a verdict."
    ),
    epochs: int = typer.Option(
        None, min=1, help="Training epochs (default 6; --tokens 4; --quick: fewer)."
    ),
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
    profile_repeats: int = typer.Option(
        None, min=1, help="Timed calls per segment profiling (default 100; --quick 20)."
    ),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="--model is a pickled nn.Module you trust."
    ),
    factory: str = typer.Option(
        None, parser=params.factory, metavar="MOD:FN", help="--model's factory."
    ),
    generate: bool = typer.Option(
        False, "--generate", help="The text-generation demo instead: a byte-level decoder."
    ),
    steps: int = typer.Option(
        None,
        min=1,
        help="--generate: training steps (cached); the demo's own 900 (--quick 200) if not given.",
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
    exit histogram and energy with its source, writes the Pareto front as a PNG, and says
    what to run next. The output folder must be new, empty, or an earlier demo's. Needs the
    export extra (torch).

    Examples:

        edgeexit demo --quick           # about a minute; then without --quick

        edgeexit demo -o /tmp/demo --epochs 2 --target-latency 0.05ms

        edgeexit demo --model model.pt --data cal.npz --test-data test.npz

        edgeexit demo --generate        # early-exit text generation, trained on stdlib code

        edgeexit demo --denoise         # exits that give images, a PSNR budget

        edgeexit demo --tokens          # per-token exits: each token leaves on its own
    """
    variants = [name for name, on in (("generate", generate), ("denoise", denoise),
                                      ("tokens", tokens)) if on]  # fmt: skip
    if len(variants) > 1:
        raise usage_error(f"--{' and --'.join(variants)}: choose one demo")
    variant = variants[0] if variants else "digits"
    out = Path(FOLDERS[variant]) if out is None else out
    if variant == "generate":
        _generation_demo(out, steps, quick, as_json)
    elif variant == "denoise":
        _denoise_demo(out, epochs, quick, max_quality_drop, as_json)
    elif variant == "tokens":
        _token_demo(out, epochs, quick, as_json)
    else:
        _digits_demo(out, quick, as_json, model=model, data=data, test_data=test_data,
                     epochs=epochs, max_accuracy_drop=max_accuracy_drop,
                     target_latency_ms=target_latency, target=target,
                     profile_repeats=profile_repeats, trust_pickle=trust_pickle,
                     factory=factory)  # fmt: skip


def _digits_demo(out: Path, quick: bool, as_json: bool, **given: Any) -> None:
    from edgeexit.errors import InputError
    from edgeexit.examples import demo  # torch only once it runs

    settings = _settings(demo.QUICK if quick else {}, given)
    try:
        options = demo.DemoOptions(out_dir=out, **settings)
    except InputError as err:  # options that do not go together
        raise usage_error(f"{err} (see 'edgeexit demo --help')") from None

    before = _written(out)

    def kept() -> str:  # written step by step: what changed is what finished
        now = _written(out)
        done = sorted(name for name, when in now.items() if before.get(name) != when)
        if done:
            return f"{out} keeps the steps that finished: {', '.join(done)}"
        return f"no step finished; {out} is {'as it was' if before else 'empty'}"

    _run_and_show(lambda tell: demo.run_demo(options, progress=tell), as_json, kept)


def _written(folder: Path) -> dict[str, int]:
    """What a demo folder holds, each entry with the time it was last written."""
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}


def _denoise_demo(
    out: Path, epochs: int | None, quick: bool, max_quality_drop: float, as_json: bool
) -> None:
    def run(tell: Progress) -> Any:
        from edgeexit.examples import denoise  # imports torch

        settings = _settings(denoise.QUICK if quick else {}, {"epochs": epochs})
        return denoise.run_denoise_demo(
            out, max_quality_drop=max_quality_drop, progress=tell, **settings
        )

    _run_and_show(run, as_json, f"nothing written; {unchanged(out)}")


def _token_demo(out: Path, epochs: int | None, quick: bool, as_json: bool) -> None:
    def run(tell: Progress) -> Any:
        from edgeexit.examples import tokens  # imports torch

        settings = _settings(tokens.QUICK if quick else {}, {"epochs": epochs})
        return tokens.run_token_demo(out, progress=tell, **settings)

    _run_and_show(run, as_json, f"nothing written; {unchanged(out)}")


def _generation_demo(out: Path, steps: int | None, quick: bool, as_json: bool) -> None:
    def run(tell: Progress) -> Any:
        from edgeexit.examples import generation_demo as demo  # imports torch

        settings = _settings(demo.QUICK if quick else {}, {"steps": steps})
        return demo.run_generation_demo(out, progress=tell, **settings)

    kept = f"nothing written; {unchanged(out)}; a model trained to the end stays cached"
    _run_and_show(run, as_json, kept)


def _settings(quick: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The variant's keywords: --quick's, then what the user gave (None: not given)."""
    return {**quick, **{k: v for k, v in given.items() if v is not None}}


def _run_and_show(
    run: Callable[[Progress], Any], as_json: bool, kept: str | Callable[[], str]
) -> None:
    """Run a demo with progress on stderr, then print its report."""
    with progress("demo", kept=kept, for_script=as_json) as tell:
        tell("loading torch", 0, 0)  # seconds on a small machine: said at once
        report = run(tell)
    if as_json:
        typer.echo(in_flags(dumps_json(report.to_json())))
        return
    show(report)
