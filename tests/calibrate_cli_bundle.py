"""A small untrained digits bundle and data files for the calibrate / bench CLI tests.

The CLI tests check mechanics (parsing, errors, what is written), not accuracy, so the
model is exported untrained: export takes a second, training would take many.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(tempfile.mkdtemp(prefix="edgeexit-calibrate-cli-"))


@functools.cache
def cli_bundle() -> tuple[Path, Path]:
    """(bundle dir, data .npz with x and y), built once per session; copy before writing."""
    import torch

    import edgeexit
    from edgeexit.examples import digits_cnn, load_digits

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_digits(seed=0).calibration
    x = ((data.x - 0.5) * 6).astype(np.float32)[:120]  # spread an untrained net's scores
    bundle = ROOT / "bundle"
    edgeexit.export(digits_cnn(width=8).eval(), x[:2], bundle, validate=False)
    path = ROOT / "data.npz"
    np.savez(path, x=x, y=data.y[:120])
    return bundle, path


def fresh_bundle(tmp_path: Path) -> tuple[Path, Path]:
    bundle, data = cli_bundle()
    return shutil.copytree(bundle, tmp_path / "bundle"), data
