"""`edgeexit profile BUNDLE --target T -o PROFILE.json`: measure a bundle on this device."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from edgeexit.bundle import read_manifest
from edgeexit.cli import params
from edgeexit.cli.core import command
from edgeexit.cli.progress import progress, unchanged
from edgeexit.data import load_data
from edgeexit.energy import choose_meter
from edgeexit.files import check_output, dumps_json
from edgeexit.measure.link_probe import probe_link
from edgeexit.measure.profiling import profile_bundle
from edgeexit.targets import load_target
from edgeexit.targets.emulation import emulation_warning


@command("profile")
def profile_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle directory."),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", parser=params.output_path, help="Write the profile JSON here."
    ),
    repeats: int = typer.Option(200, min=1, help="Timed calls per segment and per exit."),
    warmup: int = typer.Option(20, min=0, help="Untimed calls per segment and per exit first."),
    rounds: int = typer.Option(
        10, min=1, help="Interleaved rounds the exits' calls are spread over."
    ),
    min_seconds: float = typer.Option(
        2.0,
        "--min-seconds",
        min=0.0,
        help="Time every exit's calls for at least this long, so that the rounds span a "
        "shared machine's slow and fast stretches (0: --repeats only).",
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Samples per call."),
    data: Path = typer.Option(None, "--data", help="Inputs (.npz/.npy) instead of synthetic."),
    link: str = typer.Option(
        None,
        "--link",
        metavar="URL",
        help="A split bundle's server (edgeexit serve): measure the round trip and what "
        "offloading one sample costs from here, for calibrate.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Measure every segment's latency (median, p95) and energy on this device, and what a
    sample leaving at each exit costs through the runtime (per-call overhead included).

    Run it on the device itself; calibration on the host reads the JSON (its per-exit
    costs) to plan exits. -o replaces only an earlier profile.

    Examples:

        edgeexit profile bundle/ --target rpi5 -o rpi5.json

        edgeexit profile bundle/ --target x86-cpu --repeats 500 --batch-size 8 --json

        edgeexit profile split/ --link http://server:8000/edgeexit -o device.json
    """
    sources = (bundle,) if data is None else (bundle, data)
    claimed = None if out is None else check_output(out, "profile", inputs=sources)  # now
    inputs = load_data(data, read_manifest(bundle).inputs).inputs if data else None
    kept = "nothing written" if out is None else f"nothing written; {unchanged(out)}"
    with progress("profile", kept=kept, for_script=as_json) as tell:
        tell("loading the bundle", 0, 0)
        profile = profile_bundle(
            bundle, target, repeats=repeats, warmup=warmup, batch_size=batch_size,
            rounds=rounds, inputs=inputs, progress=lambda done, n: tell("profiling", done, n),
            min_seconds=min_seconds,
        )  # fmt: skip
    if link is not None:
        with progress("profile", kept=kept, for_script=as_json) as tell:
            tell("measuring the link", 0, 0)
            profile = replace(profile, link=probe_link(bundle, link))
    if warning := emulation_warning():
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if claimed is not None:
        profile.save(claimed)
    if as_json:
        typer.echo(dumps_json(profile.to_json()))
        return
    Console().print(profile)
    if not profile.energy_measured:  # why, sensor by sensor (the notice said only 'none')
        Console().print(escape(f"energy: {choose_meter(load_target(target))[1].describe()}"))
    if out is not None:
        Console().print(f"[green]wrote[/green] {out}")
