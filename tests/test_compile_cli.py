"""`edgeexit compile`: an existing fp32 bundle re-targeted from the command line (int8 for a
Pi, fp16 for CUDA), with export --target's checks, its output guard and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeexit.bundle import read_manifest
from edgeexit.cli import app

pytest.importorskip("onnx")
from fixtures.targets_digits import load_weights, write_bundle, write_calib  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(fp32 bundle, calibration .npz with labels) in a folder of their own."""
    root = tmp_path_factory.mktemp("compile-cli")
    return write_bundle(root / "fp32", load_weights()), write_calib(root / "calib.npz")


def errors(result) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_int8_for_a_pi_from_the_command_line(digits, tmp_path):
    src, calib = digits
    out = tmp_path / "rpi4"
    result = runner.invoke(
        app, ["compile", str(src), "-t", "rpi4", "--calib-data", str(calib), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "int8 bundle for rpi4" in result.stdout and f"wrote {out}" in result.stdout
    manifest = read_manifest(out)
    assert manifest.extra["precision"] == "int8" and manifest.extra["target"] == "rpi4"
    assert read_manifest(src).extra["precision"] == "fp32"  # the source is left as it was
    ran = runner.invoke(app, ["run", str(out), "--data", str(calib), "--json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["accuracy"] > 0.85  # the trained fixture, in int8


def test_fp16_json_report_and_data_spelled_as_elsewhere(digits, tmp_path):
    src, calib = digits
    out = tmp_path / "fp16"
    argv = ["compile", str(src), "--target", "cuda", "--data", str(calib), "--out", str(out)]
    result = runner.invoke(app, [*argv, "--json", "--max-quant-drop", "1%"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # stdout holds only the JSON
    assert doc["bundle"] == str(out) and doc["precision"] == "fp16" and doc["target"] == "cuda"
    assert [e["exit"] for e in doc["exits"]] == [0, 1, 2]
    assert read_manifest(out).extra["precision"] == "fp16"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "int8 for rpi4 needs calibration data (--calib-data, a .npz)"),
        (["-o", "{src}"], "is an input of this command or holds one"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(digits, tmp_path, extra, says):
    src, calib = digits
    before = sorted(p.name for p in src.iterdir())
    argv = ["compile", str(src), "-t", "rpi4", *(extra or ["-o", str(tmp_path / "out")])]
    result = runner.invoke(app, [a.format(src=src, calib=calib) for a in argv])
    assert result.exit_code == 1, result.output
    assert len(errors(result)) == 1 and says in errors(result)[0], result.stderr
    assert sorted(p.name for p in src.iterdir()) == before
    assert not (tmp_path / "out").exists()


def test_an_earlier_bundle_holding_the_data_is_not_replaced(digits, tmp_path):
    import shutil

    src, calib = digits
    earlier = shutil.copytree(src, tmp_path / "earlier")
    data = shutil.copy(calib, earlier / "calib.npz")
    argv = ["compile", str(src), "-t", "rpi4", "--calib-data", str(data), "-o", str(earlier)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert "is an input of this command or holds one" in errors(result)[0]
    assert (earlier / "calib.npz").is_file()


def test_labels_outside_the_classes_are_refused_naming_the_file(digits, tmp_path):
    import shutil

    from edgeexit.bundle import write_manifest

    src, _ = digits
    bundle = shutil.copytree(src, tmp_path / "b")
    write_manifest(bundle, read_manifest(bundle).with_extra(num_classes=10))
    data = tmp_path / "labels.npz"
    np.savez(data, x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 2, 99]))
    argv = [
        "compile",
        str(bundle),
        "-t",
        "rpi4",
        "--calib-data",
        str(data),
        "-o",
        str(tmp_path / "o"),
    ]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert errors(result) == [
        f"error: {data}: label 99 (row 3, 1 such rows) is outside the model's classes; "
        "expected 0..9"
    ]


def test_a_bundle_compiled_already_is_refused(digits, tmp_path):
    src, calib = digits
    first = tmp_path / "int8"
    argv = ["compile", str(src), "-t", "rpi5", "--calib-data", str(calib), "-o", str(first)]
    assert runner.invoke(app, argv).exit_code == 0
    again = runner.invoke(app, ["compile", str(first), "-t", "rpi4", "-o", str(tmp_path / "b")])
    assert again.exit_code == 1
    assert errors(again) == [f"error: {first} is already int8; compile from an fp32 bundle"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-t", "rpi4"], "Missing option '-o' / '--out'"),
        (["-o", "x"], "Missing option '--target' / '-t'"),
        (["-t", "pi", "-o", "x"], "'pi' is not a target; expected one of"),
        (["-t", "rpi4", "-o", "x", "--max-quant-drop", "lots"], "expected a fraction in [0, 1)"),
    ],
)
def test_malformed_options_are_usage_errors(digits, argv, says):
    src, _ = digits
    result = runner.invoke(app, ["compile", str(src), *argv])
    assert result.exit_code == 2, result.output
    assert len(errors(result)) == 1 and says in errors(result)[0], result.stderr


def test_on_a_device_install_compile_says_which_extra(digits, tmp_path):
    src, calib = digits
    code = (
        "import sys; sys.modules['onnx'] = None\n"  # a device install has the runtime only
        "from edgeexit.cli import main\n"
        f"sys.argv = ['edgeexit', 'compile', {str(src)!r}, '-t', 'rpi4', '-o', 'out']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: edgeexit compile needs onnx, which this install lacks (a device install has "
        "the runtime only): on the host, pip install 'edgeexit[export]' (torch: the CPU wheel "
        "first)"
    ]
    assert list(tmp_path.iterdir()) == []
