"""`edgeexit run BUNDLE --data X`: run a bundle on the device with per-sample early exit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from edgeexit import files
from edgeexit.cli import params
from edgeexit.cli.core import command, usage_error
from edgeexit.data import load_data
from edgeexit.files import dumps_json
from edgeexit.measure.quality import per_sample_quality
from edgeexit.offload.device import SplitRuntime
from edgeexit.runtime import Runtime


@command("run")
def run_cmd(
    bundle: Path = typer.Argument(
        ..., metavar="BUNDLE", help="The bundle directory (manifest.json + segments)."
    ),
    input_path: Path = typer.Option(
        ...,
        "--data",
        "--input",
        "-i",
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
    save_outputs: Path = typer.Option(
        None,
        "--save-outputs",
        help="Write each sample's output (logits, or the image or tensor its exit gave) "
        "to this new .npy file.",
    ),
    server: str = params.server_option(),
    timeout_s: float = params.timeout_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Run a bundle on some inputs: predictions (or outputs), exit taken, latency, energy.

    Each sample leaves at the first exit whose score reaches the bundle's threshold.
    Latency and energy are those of one call on the whole input, after --warmup untimed
    calls. Energy says where it comes from: measured by a named sensor, or modeled. With
    labels 'y' in a .npz input, the accuracy is reported too.

    Examples:

        edgeexit run bundle/ --data digits.npz

        edgeexit run bundle/ --data x.npy --target rpi5 --threads 4 --json

        edgeexit run bundle/ --data x.npy --warmup 0      # the cold first call

        edgeexit run bundle/ --data x.npy --max-exit 1    # segments after exit 1 stay on disk

        edgeexit run denoise/ --data noisy.npy --save-outputs clean.npy   # image exits

        edgeexit run split/ --data x.npz --server http://127.0.0.1:8000/edgeexit
    """
    saved = None  # refused now, not after the run; created then, never replaced
    if save_outputs is not None:
        saved = files.check_output(save_outputs, "outputs file", inputs=(bundle, input_path))
    if server is not None and max_exit is not None:
        raise usage_error("--max-exit and --server: a split bundle's device runs to its split exit")
    if server is not None:
        runtime = SplitRuntime(bundle, server=server, timeout_s=timeout_s, target=target,
                               threads=threads)  # fmt: skip
    else:
        runtime = Runtime(bundle, target=target, threads=threads, max_exit=max_exit)
    kind = runtime.manifest.output
    classes = kind != "tensor"  # else 'y' holds target tensors
    data = load_data(input_path, runtime.manifest.inputs, targets=runtime.targets_shape)
    if data.labels is not None and classes:
        data.check_labels(runtime.num_classes, str(input_path))
    for _ in range(warmup):
        runtime.run(data.inputs)
    result = runtime.run(data.inputs)
    if saved is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.outputs)
        files.write_bytes_atomic(saved, buffer.getvalue(), what="outputs file")
    score = _score(result, data.labels, classes)
    if as_json:
        doc = {"target": runtime.target.name, "warmup_calls": warmup, **result.to_json(),
               **score}  # fmt: skip
        typer.echo(dumps_json(doc))
        return
    Console().print(result)
    if score.get("accuracy") is not None:
        Console().print(
            f"accuracy     {score['accuracy']:.2%} against the labels 'y' in {input_path}"
        )
    if "psnr_db" in score:
        Console().print(f"PSNR         {score['psnr_db']:.2f} dB (mean) against the targets 'y' "
                        f"in {input_path}")  # fmt: skip


def _score(result, labels, classes: bool) -> dict:
    """Accuracy against labels, or the outputs' mean PSNR against target tensors."""
    if classes:
        accuracy = None if labels is None else float((result.predictions == labels).mean())
        return {"accuracy": accuracy}
    if labels is None:
        return {}
    psnr = per_sample_quality(result.outputs[None], labels, "psnr")[0]
    return {"psnr_db": float(psnr.mean())}
