"""`edgeexit calibrate` through the CLI: what it prints, writes, and refuses."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
from calibrate_cli_bundle import fresh_bundle  # noqa: E402

from edgeexit.bundle import read_manifest  # noqa: E402
from edgeexit.cli import app  # noqa: E402

runner = CliRunner()
FAST = ["--json"]


def calibrate(*args):
    return runner.invoke(app, ["calibrate", *map(str, args)])


def test_latency_budget_writes_thresholds_and_report(tmp_path):
    bundle, data = fresh_bundle(tmp_path)
    result = calibrate(bundle, "--data", data, "--max-accuracy-drop", "0.05")
    assert result.exit_code == 0, result.output
    assert "Per-exit thresholds" in result.output and "shared threshold" in result.output
    manifest = read_manifest(bundle)
    calibration = manifest.extra["calibration"]
    assert list(manifest.thresholds) == [
        float("inf") if t is None else t for t in calibration["expected"]["thresholds"]
    ]
    assert calibration["budget"]["max_accuracy_drop"] == 0.05
    assert calibration["profile"]["source"] == "measured here (batch 1)"
    assert calibration["energy_source"] == "modeled"


def test_json_output_is_only_json(tmp_path):
    bundle, data = fresh_bundle(tmp_path)
    result = calibrate(bundle, "--data", data, "--target-latency", "10ms", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["expected"]["mean_latency_ms"] <= 10.0
    assert {"shared_baseline", "front", "profile"} <= set(doc)


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--target-latency", "fast"], "cannot read latency 'fast'", 2),
        (["--target-energy", "4ms"], "cannot read energy '4ms'", 2),
        (["--target-latency", "1us"], "smallest achievable mean latency is", 1),
        (["--target-energy", "1uJ"], "smallest achievable energy is", 1),
        ([], "no budget given", 2),
        (["--risk", "0.02", "--target-latency", "4ms"], "cannot be combined", 2),
        (["--max-accuracy-drop", "2"], "is not an accuracy drop: expected a fraction", 2),
    ],
)
def test_bad_budgets_are_one_line_errors_and_leave_bundle_alone(tmp_path, args, message, code):
    bundle, data = fresh_bundle(tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    result = calibrate(bundle, "--data", data, *args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert (bundle / "manifest.json").read_bytes() == before


def test_malformed_data_is_refused(tmp_path):
    bundle, data = fresh_bundle(tmp_path)
    with np.load(data) as f:
        x, y = f["x"], f["y"]
    cases = {
        "no_x.npz": ({"y": y}, "has no array 'x'"),
        "short_y.npz": ({"x": x, "y": y[:5]}, "labels 'y' have shape"),
        "bad_shape.npz": ({"x": x[:, :, :4, :]}, "expected"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        result = calibrate(bundle, "--data", tmp_path / name, "--target-latency", "4ms")
        assert result.exit_code == 1 and message in result.output, result.output


def test_profile_from_edgeexit_profile_is_used(tmp_path):
    from edgeexit.measure.profiling import profile_bundle

    bundle, data = fresh_bundle(tmp_path)
    profile_bundle(bundle, repeats=20, warmup=2).save(tmp_path / "p.json")
    result = calibrate(bundle, "--data", data, "--max-accuracy-drop", "0.1",
                       "--profile", tmp_path / "p.json", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["profile"]["source"] == f"profile {tmp_path / 'p.json'}"
    assert doc["energy_source"] == "modeled"  # no sensor here: modeled and labeled so


def test_profile_of_another_bundle_is_refused(tmp_path):
    from edgeexit.measure.profiling import profile_bundle

    bundle, data = fresh_bundle(tmp_path)
    profile = profile_bundle(bundle, repeats=5, warmup=1).to_json()
    profile["segments"][0]["sha256"] = "0" * 64
    (tmp_path / "p.json").write_text(json.dumps(profile))
    result = calibrate(bundle, "--data", data, "--target-latency", "4ms",
                       "--profile", tmp_path / "p.json")  # fmt: skip
    assert result.exit_code == 1 and "another bundle" in result.output


def test_guarantee_mode_and_plot_and_dry_run(tmp_path):
    pytest.importorskip("matplotlib")
    bundle, data = fresh_bundle(tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    result = calibrate(bundle, "--data", data, "--risk", "0.3", "--confidence", "0.8",
                       "--plot", tmp_path / "front.png", "--dry-run", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["guarantee"]["risk"] == 0.3 and doc["guarantee"]["p_value"] <= 0.2
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert (bundle / "manifest.json").read_bytes() == before
