"""The short end-to-end behind ``edgeexit demo``: train the digits ResNet with an exit after
every block, save it, export it as a bundle, and score each exit of the bundle under ONNX
Runtime on held-out digits. Later stages (calibrate, run, bench) build on its outputs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.table import Table

from edgeexit.bundle import read_manifest, verify_segments


@dataclass(frozen=True)
class DemoReport:
    """Where the demo wrote its files, and each exit's test accuracy in the bundle."""

    out_dir: Path
    bundle_dir: Path
    exit_accuracy: tuple[float, ...]
    mean_score: tuple[float, ...]

    def __rich_console__(self, console, options):
        table = Table(title="bundle exits on test digits (ONNX Runtime)")
        for col in ("exit", "accuracy", "mean confidence"):
            table.add_column(col, justify="right")
        for i, (acc, score) in enumerate(zip(self.exit_accuracy, self.mean_score)):
            table.add_row(str(i), f"{acc:.1%}", f"{score:.3f}")
        yield table
        yield f"bundle: {self.bundle_dir}   data: {self.out_dir}/calibration.npz, test.npz"


def run_demo(
    out_dir: str | os.PathLike,
    *,
    epochs: int = 6,
    seed: int = 0,
    progress: Callable[[str], None] = lambda step: None,
) -> DemoReport:
    """Train, save, export and evaluate; ``progress`` is told each step's name."""
    import torch

    import edgeexit
    from edgeexit.examples.digits import load_noisy_digits
    from edgeexit.examples.models import digits_resnet
    from edgeexit.export.train import train_multi_exit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_noisy_digits(seed=seed, max_noise_std=0.4)
    torch.manual_seed(seed)
    model = digits_resnet()
    progress(f"training 4 exits jointly for {epochs} epochs")
    train_multi_exit(model, data.train.x, data.train.y, epochs=epochs, lr=1e-2, seed=seed)
    progress("saving and exporting")
    edgeexit.save(model, out / "model.pt", example_inputs=torch.from_numpy(data.test.x[:4]))
    result = edgeexit.export(model, torch.from_numpy(data.test.x[:4]), out / "bundle")
    data.calibration.save_npz(out / "calibration.npz")
    data.test.save_npz(out / "test.npz")
    progress("scoring every exit under ONNX Runtime")
    accuracy, score = _score_exits(result.bundle_dir, data.test.x, data.test.y)
    return DemoReport(out, result.bundle_dir, accuracy, score)


def _score_exits(bundle_dir: Path, x: np.ndarray, y: np.ndarray):
    manifest = read_manifest(bundle_dir)
    values = {manifest.inputs[0].name: x}
    accuracy, score = [], []
    for seg, path in zip(manifest.segments, verify_segments(bundle_dir, manifest)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [*seg.carry, seg.logits, seg.score]
        values = dict(zip(names, sess.run(names, {n: values[n] for n in seg.inputs})))
        accuracy.append(float((values[seg.logits].argmax(axis=1) == y).mean()))
        score.append(float(values[seg.score].mean()))
    return tuple(accuracy), tuple(score)
