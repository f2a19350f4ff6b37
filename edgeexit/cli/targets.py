"""`edgeexit targets [NAME]`: list the shipped device profiles, or show one."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.console import Console

from edgeexit.cli.core import command
from edgeexit.files import dumps_json
from edgeexit.targets import available_targets, load_target
from edgeexit.targets.render import target_details, targets_table


@command("targets")
def targets_cmd(
    name: str = typer.Argument(
        None, metavar="NAME", help="A target name or the path of a .toml profile."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the device targets, or show one.

    Examples:

        edgeexit targets

        edgeexit targets rpi4 --json

        edgeexit targets ./my-board.toml
    """
    targets = [load_target(name)] if name else [load_target(n) for n in available_targets()]
    if as_json:
        doc = [asdict(t) for t in targets]
        typer.echo(dumps_json(doc[0] if name else doc))
        return
    Console().print(target_details(targets[0]) if name else targets_table(targets))
