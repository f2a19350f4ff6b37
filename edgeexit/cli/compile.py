"""`edgeexit compile BUNDLE -t TARGET -o OUT`: an exported fp32 bundle for another device.

What `export --target` does after exporting, for a bundle that already exists: ONNX
versions pinned to the target's, int8 or fp16 checked exit by exit against fp32. onnx is
imported inside the command, never at module level: the device CLI must work with only the
runtime installed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.cli import params
from edgeexit.cli.core import command
from edgeexit.cli.progress import progress, unchanged
from edgeexit.files import dumps_json


@command("compile")
def compile_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="An fp32 bundle (edgeexit export)."),
    target: str = typer.Option(
        ..., "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", parser=params.output_path, help="The bundle directory to write."
    ),
    calib_data: Path = typer.Option(
        None,
        "--data",
        "--calib-data",
        help="Data (.npz) to quantize with and check every exit on; int8 needs it.",
    ),
    max_quant_drop: float = params.max_quant_drop_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Compile an exported fp32 bundle for a device target (int8 for a Pi, fp16 for CUDA).

    What `edgeexit export --target` does, for a bundle already exported: ONNX versions
    pinned to the target's, its precision, every exit's accuracy checked against fp32 on
    --data. Nothing is written if an exit loses more than --max-quant-drop.

    -o must be a new path, an empty folder, or an earlier bundle (replaced in one step);
    the input bundle, the data and any folder holding them are refused.

    Examples:

        edgeexit compile bundle/ -t rpi4 --data cal.npz -o bundle-rpi4

        edgeexit compile bundle/ -t cuda --data cal.npz -o bundle-fp16 --json

        edgeexit compile bundle/ -t rpi5 --data cal.npz --max-quant-drop 0.5pp -o b5
    """
    import onnx  # noqa: F401  (a device install lacks it: said before any work, not after)

    from edgeexit.compile import CompileOptions, compile_bundle
    from edgeexit.errors import PrecisionLossError

    options = CompileOptions(max_quant_drop=max_quant_drop)
    console = Console(stderr=as_json)  # with --json, stdout holds only the JSON
    kept = f"nothing written; {unchanged(out)}"
    try:
        with progress("compile", kept=kept, for_script=as_json) as tell:
            tell(f"compiling for {target}", 0, 0)  # converting and checking: seconds to minutes
            report = compile_bundle(bundle, out, target, calib=calib_data, options=options)
    except PrecisionLossError as err:  # the exits' figures say by how much
        console.print(err.report)
        raise
    if as_json:
        typer.echo(dumps_json({"bundle": str(out), **report.to_json()}))
        return
    console.print(report)
    console.print(f"[green]wrote[/green] {out}")
