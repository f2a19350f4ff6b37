"""`edgeexit demo` runs end to end and leaves a bundle and data files the next stages use."""

import torch
from typer.testing import CliRunner

from edgeexit.bundle import read_manifest
from edgeexit.cli import app

torch.set_num_threads(1)


def test_demo_trains_exports_and_scores(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "bundle exits on test digits" in result.output and "accuracy" in result.output
    assert read_manifest(tmp_path / "bundle").num_exits == 4
    for name in ("model.pt", "calibration.npz", "test.npz"):
        assert (tmp_path / name).is_file()
