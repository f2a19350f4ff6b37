"""`edgeexit bench` through the CLI: a bundle as deployed against the full chain."""

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
from calibrate_cli_bundle import fresh_bundle  # noqa: E402

from edgeexit.cli import app  # noqa: E402

runner = CliRunner()
KEYS = {"accuracy", "mean_latency_ms", "p95_latency_ms", "exit_counts", "energy_mj_per_sample",
        "energy_source", "speedup"}  # fmt: skip


def test_bench_json_after_calibrate(tmp_path):
    bundle, data = fresh_bundle(tmp_path)
    calibrated = runner.invoke(
        app, ["calibrate", str(bundle), "--data", str(data), "--max-accuracy-drop", "0.1"]
    )
    assert calibrated.exit_code == 0, calibrated.output
    result = runner.invoke(app, ["bench", str(bundle), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) >= KEYS
    assert sum(doc["exit_counts"]) == doc["samples"] == 120
    assert 0.0 <= doc["accuracy"] <= 1.0 and doc["speedup"] > 0
    assert doc["energy_source"] == "modeled" and doc["energy_mj_per_sample"] > 0
    assert doc["predicted_mean_latency_ms"] is not None


def test_bench_table_and_batch(tmp_path):
    bundle, data = fresh_bundle(tmp_path)
    result = runner.invoke(app, ["bench", str(bundle), "--data", str(data), "--batch", "16"])
    assert result.exit_code == 0, result.output
    assert "batch 16" in result.output and "speed-up" in result.output
    assert "modeled" in result.output


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--batch-size", "0"], "'--batch-size'", 2),
        (["--data", "missing.npz"], "does not exist", 1),
    ],
)
def test_bench_errors_are_one_line(tmp_path, args, message, code):
    bundle, data = fresh_bundle(tmp_path)
    result = runner.invoke(app, ["bench", str(bundle), "--data", str(data), *args])
    assert result.exit_code == code and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
