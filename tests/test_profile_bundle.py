"""`edgeexit profile` on this machine: per-segment latency and energy, JSON round trip."""

import json
import logging

import numpy as np
import pytest
from fixtures.targets_digits import load_weights, write_bundle
from typer.testing import CliRunner

from edgeexit.cli import app
from edgeexit.errors import InputError, TargetError
from edgeexit.targets.profile import host_arch
from edgeexit.targets.profiling import DeviceProfile, load_profile, profile_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("profile") / "fp32", load_weights())


def test_profile_times_every_segment(bundle):
    calls = []
    profile = profile_bundle(
        bundle, "x86-cpu", repeats=30, warmup=3, progress=lambda d, t: calls.append((d, t))
    )
    assert profile.target == "x86-cpu" and profile.precision == "fp32"
    assert len(profile.segments) == 3
    for s in profile.segments:
        assert 0 < s.latency_ms.min <= s.latency_ms.median <= s.latency_ms.p95
    assert profile.exit_latency_ms(2) == pytest.approx(
        sum(s.latency_ms.median for s in profile.segments)
    )
    assert calls[-1] == (99, 99)  # 3 segments x (3 warm-up + 30 timed)
    # This host has no readable sensor (or RAPL as root): the figure names its source.
    if profile.energy_source == "modeled":
        assert not profile.energy_measured
        assert profile.segments[0].power_w == pytest.approx(10.0)  # x86-cpu's power model
    assert all(s.energy_mj > 0 for s in profile.segments)


def test_profile_json_has_the_contract_keys_and_round_trips(bundle, tmp_path):
    profile = profile_bundle(bundle, "x86-cpu", repeats=5, warmup=1, batch_size=4)
    path = tmp_path / "p.json"
    profile.save(path)
    doc = json.loads(path.read_text())
    assert {"target", "energy_source", "segments"} <= set(doc)
    assert {"median", "p95"} <= set(doc["segments"][0]["latency_ms"])
    assert load_profile(path) == profile
    assert doc["batch_size"] == 4


def test_real_inputs_are_used_when_given(bundle):
    x = np.zeros((8, 1, 8, 8), dtype=np.float32)
    profile = profile_bundle(bundle, "x86-cpu", repeats=3, warmup=0, batch_size=2, inputs=(x,))
    assert profile.batch_size == 2


def test_bad_settings_and_bad_profile_files_are_refused(bundle, tmp_path):
    with pytest.raises(InputError, match="repeats must be an integer >= 1"):
        profile_bundle(bundle, "x86-cpu", repeats=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "edgeexit.profile/1", "target": "x"}))
    with pytest.raises(TargetError, match="bad.json: missing or malformed key"):
        DeviceProfile.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(TargetError, match="format is 'list'; expected 'edgeexit.profile/1'"):
        DeviceProfile.load(bad)
    with pytest.raises(TargetError, match="does not exist"):
        DeviceProfile.load(tmp_path / "missing.json")


def test_profiling_a_foreign_target_here_warns(bundle, caplog):
    foreign = "rpi4" if host_arch() == "x86_64" else "x86-cpu"
    with caplog.at_level(logging.WARNING, logger="edgeexit.targets"):
        profile_bundle(bundle, foreign, repeats=2, warmup=0)
    assert f"profiling for {foreign} (" in caplog.text and "not the device" in caplog.text


def test_profile_cli_writes_json_and_renders_a_table(bundle, tmp_path):
    runner = CliRunner()
    out = tmp_path / "profile.json"
    args = ["profile", str(bundle), "--target", "x86-cpu", "-o", str(out)]
    result = runner.invoke(app, [*args, "--repeats", "10", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    assert "median ms" in result.output and f"wrote {out}" in result.output.replace("\n", "")
    assert len(json.loads(out.read_text())["segments"]) == 3
    as_json = runner.invoke(app, ["profile", str(bundle), "--repeats", "3", "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["target"] == "x86-cpu"


def test_profile_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["profile", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: bundle") and "Traceback" not in result.output
