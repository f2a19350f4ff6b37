"""`edgeexit export MODEL.pt -o BUNDLE`: a checkpoint to a validated bundle of ONNX segments.

torch and onnx are imported inside the command, never at module level: the device CLI
(run, profile, bench, targets) must work with only the runtime installed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.cli import params
from edgeexit.cli.core import command
from edgeexit.cli.progress import progress, unchanged
from edgeexit.criteria import CRITERIA
from edgeexit.files import dumps_json


@command("export")
def export_cmd(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="A checkpoint written by edgeexit.save()."
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", parser=params.output_path, help="The bundle directory to write."
    ),
    criterion: params.Criterion = typer.Option(
        "confidence", "--criterion", "-c", help="Exit score."
    ),
    patience: int = typer.Option(
        2, min=1, help="With --criterion patience: leave once this many exits in a row agree."
    ),
    exit_output: params.ExitOutput = typer.Option(
        "logits",
        "--exit-output",
        help="What every exit gives: logits [batch, classes], or a tensor (an image, a "
        "vector) scored by --criterion gate, q-exit or similarity.",
    ),
    input_shape: list[str] = typer.Option(
        None, "--input-shape", help="[NAME=]D1xD2x...[:DTYPE] per-sample dims; repeat per input."
    ),
    atol: float = typer.Option(
        1e-4, parser=params.positive, metavar="FLOAT", help="Validation tolerance vs PyTorch."
    ),
    opset: int = typer.Option(
        None, min=7, max=21, help="ONNX opset (default 17, capped by the target)."
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    calib_data: Path = typer.Option(
        None, "--calib-data", help="Data (.npz) to quantize with and check exits on (--target)."
    ),
    max_quant_drop: float = typer.Option(
        "0.01",
        "--max-quant-drop",
        parser=params.accuracy_drop,
        metavar="DROP",
        help="Most accuracy an exit may lose to the target's precision: 0.01 or 1pp.",
    ),
    bodies: bool = typer.Option(
        True,
        "--bodies/--no-bodies",
        help="Also write each segment without its exit head, run while that exit is "
        "disabled (threshold never), so that its head costs nothing.",
    ),
    max_prefix: int = typer.Option(
        3,
        "--max-prefix",
        min=0,
        metavar="K",
        help="Write a prefix graph for exits 1..K: the bodies before exit k and its segment "
        "as one graph, run in one call while every exit before k is disabled. 0: none.",
    ),
    trust: bool = typer.Option(
        False, "--trust-pickle", help="Load a pickled nn.Module (runs code from the file)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export a multi-exit model to a bundle of chained ONNX segments and validate it.

    -o must be a new path, an empty folder, or an earlier bundle (which is replaced in one
    step); the working directory, the model file and any folder holding it are refused.

    Examples:

        edgeexit export model.pt -o bundle

        edgeexit export model.pt -o bundle --criterion entropy --target rpi4 --calib-data cal.npz

        edgeexit export whole.pt -o bundle --trust-pickle --input-shape 1x8x8
    """
    from edgeexit.errors import InputError, ValidationError

    kept = f"nothing written; {unchanged(out)}"
    try:
        with progress("export", kept=kept, for_script=as_json) as tell:
            tell("loading torch and onnx", 0, 0)  # seconds on a small machine: say so at once
            import torch  # noqa: F401  (first: a device install, which lacks it, fails at once)

            from edgeexit.export.from_file import export_file
            from edgeexit.export.inputs import parse_input_shape
            from edgeexit.export.options import ExportOptions

            try:
                shapes = [parse_input_shape(s) for s in input_shape or ()]
            except InputError as err:  # a malformed option value: a usage error
                raise typer.BadParameter(str(err), param_hint="'--input-shape'") from None
            criterion = params.Criterion(criterion).value
            given = {"patience": patience}  # each criterion takes the ones it defines
            taken = {k: v for k, v in given.items() if k in CRITERIA[criterion].defaults}
            options = ExportOptions(
                criterion=criterion, criterion_params=taken, opset=opset, atol=atol, target=target,
                calib_data=str(calib_data) if calib_data else None, max_quant_drop=max_quant_drop,
                bodies=bodies, max_prefix=max_prefix, output=params.ExitOutput(exit_output).value,
            )  # fmt: skip
            result = export_file(
                model, out, options, input_shapes=shapes, trust_pickle=trust, progress=tell
            )
    except ValidationError as err:  # every check, then its one line
        if err.report is not None:
            Console(stderr=as_json).print(err.report)
        raise
    if as_json:
        typer.echo(dumps_json(result.manifest.to_json()))
    else:
        Console().print(result)
