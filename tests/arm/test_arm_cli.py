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
