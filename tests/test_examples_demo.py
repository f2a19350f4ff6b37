"""`edgeexit demo` runs end to end (fast variant) and leaves what the next stages use."""

import json

import pytest
import torch
from typer.testing import CliRunner

from edgeexit.bundle import read_manifest
from edgeexit.cli import app

torch.set_num_threads(1)
FAST = ["--quick", "--epochs", "1"]


def test_demo_trains_exports_profiles_calibrates_and_benches(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    for words in ("Full model vs calibrated bundle", "speed-up", "exit histogram", "modeled",
                  "verdict on held-out data: budget (accuracy drop <= 1 pp)",
                  "next: edgeexit bench"):  # fmt: skip
        assert words in result.output
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.num_exits == 3
    assert manifest.extra["calibration"]["budget"] == {
        "max_accuracy_drop": 0.01,
        "confidence": 0.9,
        "risk_metric": "disagreement",
    }
    assert any(t != float("inf") for t in manifest.thresholds[:-1])  # calibrated, not as exported
    for name in ("model.pt", "calibration.npz", "test.npz", "profile.json", "pareto.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_json_on_the_users_own_model_and_data(tmp_path):
    first = tmp_path / "first"
    assert CliRunner().invoke(app, ["demo", "-o", str(first), *FAST]).exit_code == 0
    args = ["demo", "-o", str(tmp_path / "mine"), "--model", str(first / "model.pt")]
    args += ["--data", str(first / "calibration.npz"), "--target-latency", "10ms", "--json"]
    result = CliRunner().invoke(app, args + ["--profile-repeats", "5"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["budget"] == {"latency_ms": 10.0, "confidence": 0.9, "risk_metric": "disagreement"}
    assert doc["bench"]["samples"] == 539  # the calibration split, since no --test-data
    assert doc["bench"]["verdict"] in ("met", "missed")  # the latency budget, checked
    assert doc["energy_source"] == doc["bench"]["energy_source"] == "modeled"
    energy = doc["energy_mj_per_sample"]
    latency_ratio = doc["bench"]["full_mean_latency_ms"] / doc["bench"]["mean_latency_ms"]
    assert energy["full"] / energy["calibrated"] == pytest.approx(latency_ratio)
    assert doc["files"]["model"] is None  # nothing trained


def test_demo_model_without_data_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "m.pt")])
    assert result.exit_code == 2  # options that do not go together: a usage error
    assert "--model needs --data" in result.output


def test_a_demo_that_fails_before_any_step_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--model", "missing.pt", "--data", "d.npz"])
    assert result.exit_code == 1 and "missing.pt does not exist" in result.output
    assert list(tmp_path.iterdir()) == []  # no empty demo-out/ behind


# Trains a model: left out of the fast subset (pytest -m "not slow").
pytestmark = pytest.mark.slow
