"""`edgeexit profile` on this machine: per-segment latency and energy, JSON round trip."""

import json
import logging
import time
from unittest import mock

import numpy as np
import pytest
from fixtures.targets_digits import load_weights, write_bundle
from typer.testing import CliRunner

from edgeexit.cli import app
from edgeexit.energy.common import EnergyMeter, EnergyReading
from edgeexit.errors import InputError, TargetError
from edgeexit.measure.cost_profile import CostProfile
from edgeexit.measure.profiling import profile_bundle
from edgeexit.targets.spec import host_arch


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("profile") / "fp32", load_weights())


def test_profile_times_every_segment(bundle):
    calls = []
    profile = profile_bundle(
        bundle, "x86-cpu", repeats=30, warmup=3, progress=lambda d, t: calls.append((d, t)),
        min_seconds=0, until_spread=None,
    )  # fmt: skip
    assert profile.target == "x86-cpu" and profile.precision == "fp32"
    assert len(profile.segments) == 3
    for s in profile.segments:
        assert 0 < s.latency_ms.min <= s.latency_ms.median <= s.latency_ms.p95
    assert calls[-1] == (231, 231)  # (3 segments + 3 exits + the full model) x (3 + 30)
    assert profile.full is not None and profile.full.index == 3
    assert [e.index for e in profile.exits] == [0, 1, 2]
    assert all(d <= t for d, t in calls)
    for e in profile.exits:
        assert 0 < e.latency_ms.min <= e.latency_ms.median <= e.latency_ms.p95
        assert e.latency_ms.min <= e.latency_ms.robust_mean <= e.latency_ms.p95 * 10
    assert profile.exit_latency_ms(2) == profile.exits[2].latency_ms.median
    assert profile.power_model_w == {"idle": 2.0, "active": 10.0}  # x86-cpu's power model
    # A profile holds measured energy only: RAPL as root, or nothing (never a modeled figure).
    if profile.energy_measured:
        assert profile.energy_source == "rapl"
        assert all(s.energy_mj > 0 and s.power_w > 0 for s in profile.segments)
    else:
        assert profile.energy_source == "none"
        assert all(s.energy_mj is None and s.power_w is None for s in profile.segments)
        assert all(e.energy_mj is None and e.power_w is None for e in profile.exits)
        assert profile.exit_energy_mj(2) is None


def test_profile_json_has_the_contract_keys_and_round_trips(bundle, tmp_path):
    profile = profile_bundle(bundle, "x86-cpu", repeats=5, warmup=1, batch_size=4)
    path = tmp_path / "p.json"
    profile.save(path)
    doc = json.loads(path.read_text())
    assert {"target", "energy_source", "segments"} <= set(doc)
    assert {"median", "p95"} <= set(doc["segments"][0]["latency_ms"])
    assert {"median", "p95", "robust_mean"} <= set(doc["exits"][2]["latency_ms"])
    assert CostProfile.load(path) == profile
    assert doc["batch_size"] == 4
    # A profile written before the exits block existed still loads; readers fall back.
    del doc["exits"]
    path.write_text(json.dumps(doc))
    old = CostProfile.load(path)
    assert old.exits == () and old.segments == profile.segments
    assert old.exit_latency_ms(1) == pytest.approx(
        sum(s.latency_ms.median for s in profile.segments[:2])
    )


def test_real_inputs_are_used_when_given(bundle):
    x = np.zeros((8, 1, 8, 8), dtype=np.float32)
    profile = profile_bundle(bundle, "x86-cpu", repeats=3, warmup=0, batch_size=2, inputs=(x,))
    assert profile.batch_size == 2
    with pytest.raises(InputError, match="holds 8 samples; expected at least `batch_size` 9"):
        profile_bundle(bundle, "x86-cpu", repeats=1, batch_size=9, inputs=(x,))


def test_bad_settings_and_bad_profile_files_are_refused(bundle, tmp_path):
    with pytest.raises(InputError, match="repeats must be an integer >= 1"):
        profile_bundle(bundle, "x86-cpu", repeats=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "edgeexit.profile/1", "target": "x"}))
    with pytest.raises(TargetError, match="bad.json: missing key"):
        CostProfile.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(TargetError, match="format is 'list'; expected 'edgeexit.profile/1'"):
        CostProfile.load(bad)
    with pytest.raises(TargetError, match="does not exist"):
        CostProfile.load(tmp_path / "missing.json")


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
    as_json = runner.invoke(app, ["profile", str(bundle), "--repeats", "3", "--rounds", "2",
                                  "--json"])  # fmt: skip
    assert as_json.exit_code == 0
    doc = json.loads(as_json.stdout)
    assert doc["target"] == "x86-cpu" and [e["index"] for e in doc["exits"]] == [0, 1, 2]


def test_profile_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["profile", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: bundle") and "Traceback" not in result.output


class FakeSensor(EnergyMeter):
    """A 4 W sensor: energy = 4 W x the window, labeled measured."""

    source, measured, min_window_s = "fake-sensor", True, 0.05

    def begin_window(self) -> None:
        self._t0 = time.perf_counter()

    def end_window(self) -> EnergyReading:
        duration_s = time.perf_counter() - self._t0
        return EnergyReading(4.0 * duration_s * 1e3, self.provenance, duration_s)


def test_a_sensor_gives_energy_per_call_over_a_long_enough_window(bundle):
    with mock.patch(
        "edgeexit.measure.profiling.get_meter", autospec=True, return_value=FakeSensor()
    ):
        profile = profile_bundle(bundle, "x86-cpu", repeats=3, warmup=0, rounds=2)
    assert profile.energy_measured and profile.energy_source == "fake-sensor"
    assert profile.measured_idle_power_w == pytest.approx(4.0)
    for s in profile.segments:
        assert s.power_w == pytest.approx(4.0)
        # The window lasted >= 50 ms, so there were far more calls than the 3 repeats asked.
        assert s.energy_mj < 4.0 * 0.05 * 1e3 / 3
    for e in profile.exits:  # each exit's two rounds were windows of >= 50 ms each
        assert e.power_w == pytest.approx(4.0)
        assert 0 < e.energy_mj < 4.0 * 0.05 * 1e3 / 2
    assert profile.exit_energy_mj(1) == profile.exits[1].energy_mj


@pytest.mark.gpu
def test_fp16_bundle_profiles_on_cuda(bundle, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider in this onnxruntime")
    from edgeexit.compile.compiler import compile_bundle

    compile_bundle(bundle, tmp_path / "cuda", "cuda")
    profile = profile_bundle(tmp_path / "cuda", "cuda", repeats=20, warmup=5)
    assert profile.precision == "fp16" and profile.providers[0] == "CUDAExecutionProvider"
    assert all(s.latency_ms.median > 0 for s in profile.segments)


def test_exits_are_timed_for_min_seconds_and_progress_keeps_up(bundle):
    calls = []
    start = time.perf_counter()
    profile = profile_bundle(
        bundle, "x86-cpu", repeats=3, warmup=0, rounds=2, min_seconds=0.5,
        progress=lambda d, t: calls.append((d, t)),
    )  # fmt: skip
    assert time.perf_counter() - start >= 0.5
    assert all(d <= t for d, t in calls) and calls[-1][0] == calls[-1][1] > 6 * 3
    assert all(e.latency_ms.uncontended > 0 and e.latency_ms.spread >= 0 for e in profile.exits)
