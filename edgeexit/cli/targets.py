"""`edgeexit targets [NAME]`: list the shipped device profiles, or show one."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

from edgeexit.cli.app import command
from edgeexit.targets import available_targets, load_target


@command("targets")
def targets_cmd(
    name: str = typer.Argument(None, help="A target name or the path of a .toml profile."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the device targets, or show one.

    Examples:

        edgeexit targets

        edgeexit targets rpi4 --json
    """
    targets = [load_target(name)] if name else [load_target(n) for n in available_targets()]
    if as_json:
        doc = [asdict(t) for t in targets]
        typer.echo(json.dumps(doc[0] if name else doc, indent=2))
        return
    table = Table(title="edgeexit targets")
    for col in ("name", "arch", "providers", "threads", "precision", "energy", "description"):
        table.add_column(col)
    for t in targets:
        table.add_row(
            t.name,
            t.arch,
            ", ".join(t.providers),
            str(t.intra_op_threads or "all"),
            t.precision,
            t.energy_meter,
            t.description,
        )
    Console().print(table)
