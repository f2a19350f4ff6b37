"""The energy notice: one short line, once per command, only from commands that report
energy, naming the target whose power model the figures use; the sensors' reasons under -v
and in inspect's and profile's reports.

Each command runs in a process of its own (the notice is once per process), told to look
for the Pi 5 PMIC sensor only, with a PATH that has no vcgencmd: no sensor, on any host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
from fixtures.targets_digits import load_weights, write_bundle  # noqa: E402

NOTICE = "energy: modeled from x86-cpu's power model (10 W); no sensor found"
WHY = "rpi5-pmic: vcgencmd is not on PATH (not a Raspberry Pi?)"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notice")
    np.savez(root / "d.npz", x=np.random.default_rng(0).random((64, 1, 8, 8), np.float32))
    return write_bundle(root / "b", load_weights())


def edgeexit(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEEXIT_ENERGY_METER": "rpi5-pmic",
           "PATH": os.path.dirname(sys.executable), "COLUMNS": "200"}  # fmt: skip
    code = f"import sys; from edgeexit.cli import main; sys.argv = ['edgeexit', *{argv!r}]; main()"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def energy_lines(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("energy")]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "b", "--data", "d.npz", "-t", "x86-cpu"],
        ["bench", "b", "--data", "d.npz", "-t", "x86-cpu", "--rounds", "2"],
    ],
)
def test_a_command_that_reports_energy_says_once_what_it_will_be(bundle, argv):
    lines = energy_lines(edgeexit(*argv, cwd=bundle.parent))
    assert lines == [f"{NOTICE} (edgeexit -v for details)"]


def test_verbose_gives_each_sensor_s_reason_and_quiet_none(bundle):
    argv = ["run", "b", "--data", "d.npz", "-t", "x86-cpu", "--json"]
    assert energy_lines(edgeexit("-v", *argv, cwd=bundle.parent)) == [f"{NOTICE} ({WHY})"]
    assert energy_lines(edgeexit("-q", *argv, cwd=bundle.parent)) == []


def test_commands_that_report_no_energy_say_nothing_of_it(bundle):
    assert energy_lines(edgeexit("targets", cwd=bundle.parent)) == []
    inspected = edgeexit("inspect", "b", cwd=bundle.parent)
    assert energy_lines(inspected) == []
    # inspect's report says what `run` would give here, and why: the details in full
    assert f"energy here: modeled from x86-cpu's power model (10 W); no sensor found ({WHY})" in (
        inspected.stdout
    )
    doc = json.loads(edgeexit("inspect", "b", "--json", cwd=bundle.parent).stdout)
    assert doc["energy_here"] == {"target": "x86-cpu", "source": "modeled", "power_w": 10.0,
                                  "unavailable": {"rpi5-pmic": WHY.split(": ", 1)[1]}}  # fmt: skip


def test_profile_and_a_calibration_on_its_figures_name_the_profiled_target(bundle):
    profiled = edgeexit("profile", "b", "-t", "rpi5", "--repeats", "4", "--warmup", "1",
                        "--rounds", "2", "--min-seconds", "0", "-o", "rpi5.json",
                        cwd=bundle.parent)  # fmt: skip
    rpi5 = "energy: modeled from rpi5's power model (7 W); no sensor found"
    assert energy_lines(profiled) == [f"{rpi5} (edgeexit -v for details)"]
    assert f"{rpi5} ({WHY})" in " ".join(profiled.stdout.split())  # the report has the reasons
    # calibrate on the host, with the Pi's profile: the figures are the profile's, modeled
    # from rpi5's 7 W; this host's sensors and target (x86-cpu, 10 W) have no part in them
    calibrated = edgeexit("calibrate", "b", "--data", "d.npz", "--profile", "rpi5.json",
                          "--max-accuracy-drop", "0.5", "--dry-run", cwd=bundle.parent)  # fmt: skip
    assert energy_lines(calibrated) == [] and "x86-cpu" not in calibrated.stderr
    assert "energy: modeled from rpi5's power model (7 W); costs from profile rpi5.json" in (
        " ".join(calibrated.stdout.split())
    )
