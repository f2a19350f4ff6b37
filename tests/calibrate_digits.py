"""The noisy-digits bundle that the calibration tests and benchmarks/calibration.py and
coverage.py share (the benchmarks import it as ``tests.calibrate_digits``).

Each split gets noisy copies, every sample with its own noise strength (easy to hard), so
the held-out split is large enough to resolve 1 pp. The model is a three-exit CNN whose
first segment is cheap and whose later ones carry most of the compute, as in a real
early-exit network; with the bundled examples every segment is so small that ONNX Runtime's
per-call overhead, not the network, would set the latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import edgeexit
from edgeexit.examples import load_digits, train_multi_exit
from edgeexit.examples.digits import noisy_copies
from edgeexit.examples.models import digits_three_exit


@dataclass(frozen=True)
class DigitsBundle:
    bundle: Path
    calibration: Path  # .npz with x, y
    test: Path  # held-out .npz with x, y


def build_digits_bundle(
    out_dir: Path,
    *,
    train_copies: int = 2,
    eval_copies: int = 3,
    epochs: int = 5,
    cal_copies: int | None = None,
) -> DigitsBundle:
    """Train on noisy digits (seeded), export the bundle, write calibration and test files
    (``cal_copies`` noisy copies of the calibration split, default ``eval_copies``)."""
    torch.manual_seed(0)
    clean = load_digits(seed=0)
    train = noisy_copies(clean.train, train_copies, seed=0)
    model = digits_three_exit()
    train_multi_exit(model, train.x, train.y, epochs=epochs, lr=3e-3, seed=0)
    bundle = out_dir / "bundle"
    edgeexit.export(model, train.x[:2], bundle)
    cal_copies = eval_copies if cal_copies is None else cal_copies
    cal = noisy_copies(clean.calibration, cal_copies, seed=100).save_npz(out_dir / "cal.npz")
    test = noisy_copies(clean.test, eval_copies, seed=200).save_npz(out_dir / "test.npz")
    return DigitsBundle(bundle, cal, test)
