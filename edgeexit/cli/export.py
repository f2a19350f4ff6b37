"""`edgeexit export MODEL.pt -o BUNDLE`: a checkpoint to a validated bundle of ONNX segments.

torch and onnx are imported inside the command, never at module level: the device CLI
(run, profile, bench, targets) must work with only the runtime installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgeexit.bundle import CRITERIA
from edgeexit.cli.app import command


@command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="A checkpoint written by edgeexit.save()."),
    out: Path = typer.Option(..., "-o", "--out", help="The bundle directory to write."),
    criterion: str = typer.Option(
        "confidence", "--criterion", "-c", help=f"Exit score: {', '.join(CRITERIA)}."
    ),
    patience: int = typer.Option(2, help="Agreeing exits in a row (criterion patience)."),
    input_shape: list[str] = typer.Option(
        None, "--input-shape", help="[NAME=]D1xD2x...[:DTYPE] per-sample dims; repeat per input."
    ),
    atol: float = typer.Option(1e-4, help="Validation tolerance (max abs diff vs PyTorch)."),
    opset: int = typer.Option(None, help="ONNX opset (default 17, capped by the target)."),
    target: str = typer.Option(None, "--target", "-t", help="Target name or .toml profile."),
    calib_data: Path = typer.Option(
        None, "--calib-data", help="Data (.npz) to quantize with and check exits on (--target)."
    ),
    max_quant_drop: float = typer.Option(
        1.0,
        "--max-quant-drop",
        help="Most accuracy (pp) an exit may lose to the target's precision.",
    ),
    trust: bool = typer.Option(
        False, "--trust-pickle", help="Load a pickled nn.Module (runs code from the file)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export a multi-exit model to a bundle of chained ONNX segments and validate it.

    Examples:

        edgeexit export model.pt -o bundle

        edgeexit export model.pt -o bundle --criterion entropy --target rpi4 --calib-data cal.npz

        edgeexit export whole.pt -o bundle --trust-pickle --input-shape 1x8x8
    """
    from edgeexit.errors import ValidationError
    from edgeexit.export.from_file import export_file
    from edgeexit.export.inputs import parse_input_shape
    from edgeexit.export.options import ExportOptions

    params = {"patience": patience} if criterion == "patience" else {}
    options = ExportOptions(
        criterion=criterion, criterion_params=params, opset=opset, atol=atol, target=target,
        calib_data=str(calib_data) if calib_data else None, max_quant_drop_pp=max_quant_drop,
    )  # fmt: skip
    shapes = [parse_input_shape(s) for s in input_shape or ()]
    console = Console(stderr=as_json)
    try:
        with console.status(f"exporting {model} ..."):
            result = export_file(model, out, options, input_shapes=shapes, trust_pickle=trust)
    except ValidationError as err:
        console.print(err.report)
        raise
    if as_json:
        typer.echo(json.dumps(result.manifest.to_json(), indent=2))
    else:
        console.print(result)
