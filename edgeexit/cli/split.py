"""`edgeexit split BUNDLE --at K`: keep exits 0..K on the device, serve the rest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgeexit.cli import params
from edgeexit.cli.core import command
from edgeexit.cli.progress import progress
from edgeexit.errors import PrecisionLossError
from edgeexit.files import dumps_json
from edgeexit.offload.make import SplitReport, split_bundle
from edgeexit.split import ENCODINGS

Encoding = params.choice("Encoding", ENCODINGS)


@command("split")
def split_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle to split (in place)."),
    at: int = typer.Option(
        ..., "--at", min=0, help="The device's last exit: exits after it run on the server."
    ),
    encoding: Encoding = typer.Option(
        "float32",
        "--encoding",
        help="How the carry crosses the link: float32 (exact), float16 (half the bytes) "
        "or int8 with a scale per sample (a quarter); the lossy ones are checked on --data.",
    ),
    data: Path = typer.Option(
        None, "--data", help="Data (.npz, labels optional) to check a lossy encoding on."
    ),
    max_drop: float = typer.Option(
        "0.01",
        "--max-drop",
        parser=params.accuracy_drop,
        metavar="DROP",
        help="Most accuracy (agreement without labels) the encoding may lose: "
        f"{params.DROP_FORMS}.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Split a bundle: segments 0..--at on the device, the rest on a server (edgeexit serve).

    A sample not confident enough at exit --at sends its carry to the server, which runs
    the later segments and answers. The split is recorded in the bundle's manifest, with
    the carry's wire encoding; a lossy encoding is checked first on --data, every sample
    run split and unsplit with the bundle's thresholds, and nothing is written if it loses
    more than --max-drop. Split after calibrate: new thresholds need a new split.

    Examples:

        edgeexit split bundle/ --at 0

        edgeexit split bundle/ --at 1 --encoding int8 --data cal.npz --max-drop 0.5pp

        edgeexit serve bundle/            # the server, on Ray Serve

        edgeexit run bundle/ --data x.npz --server http://127.0.0.1:8000/edgeexit
    """
    console = Console(stderr=as_json)
    try:
        with progress("split", kept="bundle unchanged", for_script=as_json) as tell:
            report = split_bundle(
                bundle, at, encoding=encoding.value, data=data, max_drop=max_drop, progress=tell
            )
    except PrecisionLossError as err:
        console.print(_table(err.report, max_drop))
        raise
    if as_json:
        typer.echo(dumps_json({"bundle": str(bundle), **report.to_json()}))
        return
    console.print(_table(report, max_drop))
    console.print(f"[green]split[/green] {bundle}: serve it with `edgeexit serve {bundle}`")


def _table(r: SplitReport, max_drop: float) -> Table:
    table = Table(title=f"split after exit {r.at}", show_header=False)
    table.add_row("carry per sample", f"{r.carry_bytes:,} bytes as {r.encoding}")
    if r.measure == "exact":
        table.add_row("checked", "float32 crosses exactly: answers equal the unsplit bundle's")
        return table
    table.add_row("checked on", f"{r.samples} samples")
    if r.offloaded is not None:
        table.add_row("to the server", f"{r.offloaded:.1%} of them (the bundle's thresholds)")
    if r.drop is not None:
        verdict = "held" if r.drop <= max_drop else "MISSED: nothing written"
        table.add_row(f"{r.measure} lost", f"{100 * r.drop:.2f} pp (allowed {100 * max_drop:g} pp: "
                      f"{verdict})")  # fmt: skip
    table.add_row("largest output change", f"{r.max_abs_diff:.3g}")
    return table
