"""Exits beyond classification: an exit may give any tensor (here an image) with a learned
score, the runtime returns each sample's output from the exit it took (batch compaction
for any shape), and calibrate meets a PSNR-drop budget checked on a held-out half."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.budget import Budget, parse_quality_drop  # noqa: E402
from edgeexit.bundle import TENSOR_FORMAT, read_manifest  # noqa: E402
from edgeexit.errors import (  # noqa: E402
    BundleError,
    CalibrationError,
    DataError,
    ModelContractError,
    TargetError,
)

INF = math.inf


@pytest.fixture(scope="module")
def denoise(tmp_path_factory):
    """A small RBQE-like denoiser, trained for seconds, exported, with data files."""
    from edgeexit.examples.denoise import denoise_data, denoiser, train_denoiser

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = denoise_data()
    model = denoiser(width=12, blocks=2)
    noisy, clean = data["train"]
    train_denoiser(model, noisy[:1200], clean[:1200], epochs=3)
    root = tmp_path_factory.mktemp("denoise")
    edgeexit.export(model, torch.from_numpy(noisy[:2]), root / "bundle", criterion="gate",
                    output="tensor")  # fmt: skip
    np.savez(root / "cal.npz", x=data["calibration"][0], y=data["calibration"][1])
    np.savez(root / "test.npz", x=data["test"][0][:64], y=data["test"][1][:64])
    return root, model, data


def test_an_image_exit_exports_validates_and_says_so_in_the_manifest(denoise):
    root, _, _ = denoise
    manifest = read_manifest(root / "bundle")
    assert manifest.output == "tensor"
    doc = json.loads((root / "bundle" / "manifest.json").read_text())
    assert doc["format"] == TENSOR_FORMAT and doc["output"] == "tensor"
    assert doc["output_shape"] == ["batch", 1, 8, 8] and "num_classes" not in doc
    from edgeexit.inspection import describe_bundle

    described = describe_bundle(root / "bundle").to_json()
    assert described["output"] == "tensor" and described["output_shape"] == ["batch", 1, 8, 8]


def test_each_sample_gets_the_output_of_the_exit_it_took(denoise):
    root, model, data = denoise
    runtime = edgeexit.Runtime(root / "bundle", threads=1)
    assert runtime.output_shape == (1, 8, 8)
    x = data["test"][0][:40]
    every = runtime.run_all_exits(x)
    assert every.logits.shape == (3, 40, 1, 8, 8)
    with torch.no_grad():  # the bundle gives the PyTorch model's images
        want = torch.stack(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(every.logits, want, atol=1e-4)
    thresholds = (float(np.median(every.scores[0])), float(np.median(every.scores[1])), INF)
    result = runtime.run(x, thresholds=thresholds)
    assert set(result.exit_index.tolist()) == {0, 1, 2}  # leaving at every exit: compacted
    for n in range(len(x)):
        np.testing.assert_array_equal(result.outputs[n], every.logits[result.exit_index[n], n])
        alone = runtime.run(x[n : n + 1], thresholds=thresholds)  # as in the batch
        assert alone.exit_index[0] == result.exit_index[n]
        np.testing.assert_array_equal(alone.outputs[0], result.outputs[n])
    doc = result.to_json()
    assert "predictions" not in doc and doc["output_shape"] == [40, 1, 8, 8]
    with pytest.raises(AttributeError, match="no predictions"):
        _ = result.predictions
    with pytest.raises(BundleError, match="output_shape"):
        _ = runtime.num_classes


def test_the_contract_refuses_what_cannot_work(tmp_path):
    from edgeexit.examples.denoise import denoiser

    model = denoiser(width=4, blocks=1).eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ModelContractError, match="output='tensor'"):
        edgeexit.export(model, x, tmp_path / "a", criterion="gate")  # an image is no logits
    with pytest.raises(ModelContractError, match="reads class probabilities"):
        edgeexit.export(model, x, tmp_path / "b", output="tensor")  # confidence of pixels
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_reader_of_logits_bundles_cannot_mistake_a_tensor_bundle(denoise, tmp_path):
    root, _, _ = denoise
    doc = json.loads((root / "bundle" / "manifest.json").read_text())
    doc["output"] = "logits"  # format 2 says tensors: a contradiction is refused
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="expected 'logits' in"):
        read_manifest(tmp_path)
    doc["output"], doc["criterion"] = "tensor", "confidence"
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="reads class probabilities"):
        read_manifest(tmp_path)


def test_calibrate_meets_a_psnr_drop_on_the_held_out_half(denoise, tmp_path):
    import shutil

    from edgeexit.calibrate.pipeline import calibrate_bundle

    root, _, _ = denoise
    bundle = shutil.copytree(root / "bundle", tmp_path / "b")
    budget = Budget(max_quality_drop=0.5, quality_metric="psnr")
    report = calibrate_bundle(bundle, root / "cal.npz", budget)
    doc = report.to_json()
    held = doc["held_out"]
    assert held["samples"] + doc["search"]["samples"] == 718
    assert held["drop"] == pytest.approx(held["final_quality"] - held["quality"])
    assert held["met"] == (held["drop"] <= 0.5) and held["margin"] == pytest.approx(
        0.5 - held["drop"]
    )
    assert doc["search"]["final_quality"] - doc["search"]["quality"] <= 0.5 + 1e-9
    # written into the bundle, and the deployed runtime follows it
    manifest = read_manifest(bundle)
    assert manifest.thresholds == tuple(report.thresholds)
    assert manifest.extra["calibration"]["kind"] == "quality"
    assert edgeexit.Runtime(bundle, threads=1).run(
        np.load(root / "cal.npz")["x"][:8]
    ).outputs.shape == (8, 1, 8, 8)


def test_quality_budgets_are_checked_and_named(denoise, tmp_path):
    from edgeexit.calibrate.pipeline import calibrate_bundle

    root, _, data = denoise
    assert parse_quality_drop("0.5dB") == (0.5, "psnr")
    assert parse_quality_drop("2e-3 mse") == (0.002, "mse")
    with pytest.raises(CalibrationError, match="0.5dB"):
        parse_quality_drop("0.5pp")
    with pytest.raises(CalibrationError, match="cannot both"):
        Budget(max_quality_drop=0.5, max_accuracy_drop=0.01)
    accuracy = Budget(max_accuracy_drop=0.01)
    with pytest.raises(CalibrationError, match="max_quality_drop"):
        calibrate_bundle(root / "bundle", root / "cal.npz", accuracy, write=False)
    np.savez(tmp_path / "no_targets.npz", x=data["calibration"][0])
    psnr = Budget(max_quality_drop=0.5)
    with pytest.raises(CalibrationError, match="needs the target tensors"):
        calibrate_bundle(root / "bundle", tmp_path / "no_targets.npz", psnr, write=False)
    mse = Budget(max_quality_drop=1e-3, quality_metric="mse")  # against the last exit
    report = calibrate_bundle(root / "bundle", tmp_path / "no_targets.npz", mse, write=False)
    assert report.to_json()["against"] == "last exit"
    np.savez(tmp_path / "bad.npz", x=data["calibration"][0], y=np.zeros(718, dtype=np.int64))
    with pytest.raises(DataError, match="targets 'y' have shape"):
        calibrate_bundle(root / "bundle", tmp_path / "bad.npz", psnr, write=False)


def test_classification_budgets_and_tools_refuse_the_other_kind(denoise, tmp_path):
    from edgeexit.calibrate.pipeline import calibrate_bundle
    from edgeexit.compile.compiler import compile_bundle
    from edgeexit.examples.models import digits_cnn

    root, _, _ = denoise
    with pytest.raises(TargetError, match="target tensors"):  # fp16 without targets
        compile_bundle(root / "bundle", tmp_path / "c", "cuda")
    torch.manual_seed(0)
    edgeexit.export(digits_cnn().eval(), torch.rand(2, 1, 8, 8), tmp_path / "cls", validate=False)
    np.savez(
        tmp_path / "cls.npz", x=np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    )
    with pytest.raises(CalibrationError, match="max_accuracy_drop"):
        calibrate_bundle(tmp_path / "cls", tmp_path / "cls.npz", Budget(max_quality_drop=0.5),
                         write=False)  # fmt: skip
    assert json.loads((tmp_path / "cls" / "manifest.json").read_text())["format"] == (
        "edgeexit.bundle/1"  # classifier bundles keep the format every reader knows
    )


def test_cli_run_saves_outputs_and_calibrate_takes_a_quality_drop(denoise, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from edgeexit.cli import app

    root, _, _ = denoise
    bundle = shutil.copytree(root / "bundle", tmp_path / "b")
    runner = CliRunner()
    out = tmp_path / "out.npy"
    got = runner.invoke(app, ["run", str(bundle), "--input", str(root / "test.npz"),
                              "--save-outputs", str(out), "--json"])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert np.load(out).shape == (64, 1, 8, 8)
    doc = json.loads(got.stdout)
    assert doc["output_shape"] == [64, 1, 8, 8] and doc["psnr_db"] > 10  # against 'y'
    assert "accuracy" not in doc
    again = runner.invoke(app, ["run", str(bundle), "--input", str(root / "test.npz"),
                                "--save-outputs", str(out)])  # fmt: skip
    assert again.exit_code == 1 and "exists" in again.output  # never overwritten
    got = runner.invoke(app, ["calibrate", str(bundle), "--data", str(root / "cal.npz"),
                              "--max-quality-drop", "0.5dB", "--json"])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["held_out"]["met"] in (True, False)
    bad = runner.invoke(app, ["calibrate", str(bundle), "--data", str(root / "cal.npz"),
                              "--max-quality-drop", "half"])  # fmt: skip
    assert bad.exit_code == 2 and "0.5dB" in bad.output


def test_the_denoise_demo_end_to_end(tmp_path):
    from rich.console import Console

    from edgeexit.examples.denoise import run_denoise_demo

    demo = run_denoise_demo(tmp_path / "demo", epochs=1, rounds=1, width=8)
    doc = demo.to_json()
    assert {r["bundle"] for r in doc["test"]} == {"calibrated", "plain"}
    plain = next(r for r in doc["test"] if r["bundle"] == "plain")
    assert plain["speedup"] == 1.0 and plain["exit_shares"][-1] == 1.0
    assert doc["calibration"]["held_out"]["met"] in (True, False)
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()
    console = Console(width=100)
    with console.capture() as captured:
        console.print(demo)
    assert "denoising the test split" in captured.get()


@pytest.mark.parametrize("target", ["rpi5", "cuda"])  # int8 (QDQ), fp16
def test_compile_checks_each_exits_psnr_against_the_targets(denoise, tmp_path, target):
    from edgeexit.compile.compiler import CompileOptions, compile_bundle
    from edgeexit.errors import PrecisionLossError

    root, _, data = denoise
    options = CompileOptions(threads=1, calib_samples=128)
    report = compile_bundle(root / "bundle", tmp_path / target, target, calib=root / "cal.npz",
                            options=options)  # fmt: skip
    exits = report.to_json()["exits"]
    assert len(exits) == 3 and all(abs(e["drop_db"]) < 0.5 for e in exits)
    assert all(e["fp32_psnr_db"] > 10 for e in exits)
    runtime = edgeexit.Runtime(tmp_path / target, threads=1, providers=["CPUExecutionProvider"])
    assert runtime.run(data["test"][0][:4]).outputs.shape == (4, 1, 8, 8)
    strict = CompileOptions(threads=1, calib_samples=128, max_quant_psnr_drop=1e-9)
    with pytest.raises(PrecisionLossError, match="loses too much PSNR"):
        compile_bundle(root / "bundle", tmp_path / "strict", target, calib=root / "cal.npz",
                       options=strict)  # fmt: skip
    assert not (tmp_path / "strict").exists()
