"""`edgeexit calibrate-generation BUNDLE --prompts P.json`: how a decoder bundle generates."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeexit.cli import params
from edgeexit.cli.core import command, in_flags
from edgeexit.cli.progress import progress
from edgeexit.files import dumps_json
from edgeexit.generation import text
from edgeexit.generation.calibrate import calibrate_generation
from edgeexit.generation.manifest import read_decoder_manifest
from edgeexit.generation.prompts import read_prompts


@command("calibrate-generation")
def calibrate_generation_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A decoder bundle directory."),
    prompts: Path = typer.Option(
        ..., "--prompts", help="A .json list of prompts (text, or lists of token ids)."
    ),
    held_out: Path = typer.Option(
        None, "--held-out", help="Prompts to check on (default: every other of --prompts)."
    ),
    min_agreement: float = typer.Option(
        0.9,
        "--min-agreement",
        parser=params.agreement,
        metavar="FRACTION",
        help="Early-exit: the least share of tokens that must match full decoding.",
    ),  # fmt: skip
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=1, help="Per prompt."),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    threads: int = typer.Option(None, "--threads", min=0, help="Intra-op threads (0 = all cores)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; leave the bundle as is."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Choose self-speculative and early-exit settings by measuring on this device.

    Self-speculative decoding (its output is full decoding's) gets the draft depth, draft
    length and draft stop with the most tokens/s: every setting runs once and is ranked by
    a cost model fitted to those runs, and the three best are timed against full decoding.
    Early-exit decoding gets the lowest confidence threshold whose agreement with full
    decoding reaches --min-agreement, and is then checked as deployed on held-out prompts:
    met or MISSED, with its margin.

    Examples:

        edgeexit calibrate-generation bundle/ --prompts prompts.json --min-agreement 0.95

        edgeexit calibrate-generation bundle/ --prompts p.json --held-out h.json --dry-run
    """
    byte_level = read_decoder_manifest(bundle).extra.get("tokenizer") == text.BYTES
    calibration = read_prompts(prompts, byte_level)
    if held_out is not None:
        checked = read_prompts(held_out, byte_level)
    elif len(calibration) >= 2:
        calibration, checked = calibration[::2], calibration[1::2]
    else:
        checked = []
    kept = f"nothing written; {bundle} unchanged"
    with progress("calibrate-generation", kept=kept, for_script=as_json) as tell:
        tell("loading the bundle", 0, 0)
        report = calibrate_generation(
            bundle, calibration, held_out=checked, max_new_tokens=max_new_tokens,
            min_agreement=min_agreement, target=target, threads=threads, write=not dry_run,
            progress=tell,
        )  # fmt: skip
    if as_json:
        typer.echo(in_flags(dumps_json(report.to_json())))
        return
    for line in report.lines():
        typer.echo(line)
    if not dry_run:
        typer.echo(f"recorded in {bundle}/manifest.json (generation)")
