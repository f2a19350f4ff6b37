"""The issue's bar: `export --target rpi4` of the trained digits example gives an int8 bundle
within 1 pp of fp32 on every exit, through the export hook, runnable by the runtime."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.bundle import read_manifest  # noqa: E402
from edgeexit.errors import TargetError  # noqa: E402
from edgeexit.examples import digits_resnet, load_digits, train_multi_exit  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits()
    model = digits_resnet(width=8)
    train_multi_exit(model, digits.train.x, digits.train.y, epochs=4, seed=0)
    root = tmp_path_factory.mktemp("digits_int8")
    calib = digits.calibration.save_npz(root / "calib.npz")
    return model.eval(), digits, calib, root


def test_export_for_rpi4_is_int8_within_one_point(trained):
    model, digits, calib, root = trained
    example = torch.from_numpy(digits.train.x[:2])
    fp32 = edgeexit.export(model, example, root / "fp32")
    result = edgeexit.export(model, example, root / "rpi4", target="rpi4", calib_data=str(calib))
    report = result.compiled
    assert report.precision == "int8" and report.method == "int8-static-qdq"
    assert len(report.exits) == 4
    assert all(e.drop_pp <= 1.0 for e in report.exits)
    assert report.exits[-1].reference_accuracy > 0.9
    manifest = read_manifest(root / "rpi4")
    assert manifest.extra["precision"] == "int8" and manifest == result.manifest
    assert manifest.extra["ir_version"] <= 9
    # Held-out check with the runtime: the last exit of int8 vs fp32 on the test split.
    never = [float("inf")] * 3 + [0.0]
    accuracy = {
        name: np.mean(
            edgeexit.Runtime(bundle).run(digits.test.x, thresholds=never).predictions
            == digits.test.y
        )
        for name, bundle in (("fp32", fp32.bundle_dir), ("int8", root / "rpi4"))
    }
    assert accuracy["int8"] >= accuracy["fp32"] - 0.01


def test_export_for_an_arm_target_without_data_is_refused(trained):
    model, digits, _, root = trained
    with pytest.raises(TargetError, match="needs calibration data"):
        edgeexit.export(model, torch.from_numpy(digits.train.x[:2]), root / "x", target="rpi5")
    assert not (root / "x").exists()


def test_export_cli_cross_compiles_and_refuses_a_lossy_bundle(trained):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    model, digits, calib, root = trained
    edgeexit.save(model, root / "model.pt", example_inputs=torch.from_numpy(digits.train.x[:2]))
    runner = CliRunner()
    args = ["export", str(root / "model.pt"), "--target", "rpi4", "--calib-data", str(calib)]
    ok = runner.invoke(app, [*args, "-o", str(root / "cli-rpi4")])
    assert ok.exit_code == 0, ok.output
    assert "int8 bundle for rpi4" in ok.output and "drop (pp)" in ok.output
    assert read_manifest(root / "cli-rpi4").extra["precision"] == "int8"
    # One wild calibration sample wrecks MinMax ranges: the accuracy check refuses the bundle.
    x = np.concatenate([digits.calibration.x, digits.calibration.x[:1] * 1e4])
    y = np.concatenate([digits.calibration.y, digits.calibration.y[:1]])
    np.savez(root / "wild.npz", x=x, y=y)
    wild = [*args[:-1], str(root / "wild.npz"), "-o", str(root / "cli-bad")]
    bad = runner.invoke(app, wild)
    assert bad.exit_code == 1
    assert "error: int8 bundle for rpi4 loses too much accuracy" in bad.stderr
    assert "Traceback" not in bad.output and not (root / "cli-bad").exists()


# Trains a model: left out of the fast subset (pytest -m "not slow").
pytestmark = pytest.mark.slow
