"""`edgeexit run BUNDLE --input X`: run a bundle on the device with per-sample early exit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.cli import params
from edgeexit.cli.core import command
from edgeexit.data import load_data
from edgeexit.files import dumps_json
from edgeexit.runtime import Runtime


@command("run")
def run_cmd(
    bundle: Path = typer.Argument(
        ..., metavar="BUNDLE", help="The bundle directory (manifest.json + segments)."
    ),
    input_path: Path = typer.Option(
        ...,
        "--input",
        "-i",
        "--data",
        help="A .npy array, or a .npz with 'x' (or one array per input) and optional labels y.",
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    threads: int = typer.Option(None, "--threads", min=0, help="Intra-op threads (0 = all cores)."),
    max_exit: int = typer.Option(
        None,
        "--max-exit",
        min=0,
        help="Cap the depth: all leave by this exit; later segments are never loaded.",
    ),  # fmt: skip
    warmup: int = typer.Option(
        1,
        "--warmup",
        min=0,
        help="Untimed calls first, so latency is the steady state and not the first call's "
        "(binding buffers, ONNX Runtime's first allocations). 0 reports the cold call.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Run a bundle on some inputs: predictions, exit taken, latency and energy.

    Each sample leaves at the first exit whose score reaches the bundle's threshold.
    Latency and energy are those of one call on the whole input, after --warmup untimed
    calls. Energy says where it comes from: measured by a named sensor, or modeled. With
    labels 'y' in a .npz input, the accuracy is reported too.

    Examples:

        edgeexit run bundle/ --input digits.npz

        edgeexit run bundle/ --input x.npy --target rpi5 --threads 4 --json

        edgeexit run bundle/ --input x.npy --warmup 0      # the cold first call

        edgeexit run bundle/ --input x.npy --max-exit 1    # segments after exit 1 stay on disk
    """
    runtime = Runtime(bundle, target=target, threads=threads, max_exit=max_exit)
    data = load_data(input_path, runtime.manifest.inputs)
    if data.labels is not None:
        data.check_labels(runtime.num_classes, str(input_path))
    for _ in range(warmup):
        runtime.run(data.inputs)
    result = runtime.run(data.inputs)
    accuracy = None if data.labels is None else float((result.predictions == data.labels).mean())
    if as_json:
        doc = {"target": runtime.target.name, "warmup_calls": warmup, **result.to_json(),
               "accuracy": accuracy}  # fmt: skip
        typer.echo(dumps_json(doc))
        return
    Console().print(result)
    if accuracy is not None:
        Console().print(f"accuracy     {accuracy:.2%} against the labels 'y' in {input_path}")
