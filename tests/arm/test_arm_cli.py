"""The device CLI on the emulated Pi 4, in-process through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from edgeexit.cli import app


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"edgeexit {' '.join(args)} failed: {result.output}"
    return result


def test_run_gives_the_hosts_predictions(host_artifacts: Path):
    # Uncalibrated bundle: thresholds are inf, so every sample takes the last exit.
    bundle, data = host_artifacts / "fp32", host_artifacts / "inputs.npz"
    doc = json.loads(invoke("run", str(bundle), "-i", str(data), "-t", "rpi4", "--json").output)
    host = np.load(host_artifacts / "host_fp32.npz")
    assert doc["target"] == "rpi4"
    assert doc["predictions"] == host["all_logits"][-1].argmax(-1).tolist()
    assert doc["energy_source"] == "modeled" and doc["energy_measured"] is False


def test_targets_lists_the_pi():
    doc = json.loads(invoke("targets", "rpi4", "--json").output)
    assert doc["arch"] == "aarch64"


def test_profile_writes_a_profile_and_says_timings_mean_nothing(
    host_artifacts: Path, tmp_path: Path
):
    out = tmp_path / "rpi4.json"
    bundle = str(host_artifacts / "int8-rpi4")
    # Few repeats: under emulation the figures are meaningless anyway, only the path matters.
    result = invoke("profile", bundle, "-t", "rpi4", "-o", str(out), "--repeats", "3",
                    "--warmup", "1")  # fmt: skip
    assert "running under emulation (qemu-aarch64)" in result.output
    assert "timings mean nothing" in result.output
    doc = json.loads(out.read_text())
    assert doc["target"] == "rpi4" and doc["precision"] == "int8"
    assert len(doc["segments"]) == 4
    assert all(s["latency_ms"]["median"] > 0 for s in doc["segments"])
    # A Pi 4 has no power sensor: a profile must not pass a figure off as measured.
    assert doc["energy_measured"] is False
    assert doc["energy_source"] in ("none", "modeled")
