"""Costs from a device profile: per-exit costs when the profile has them (the segment sum
only as a fallback for old profiles), measured energy kept and labeled, else modeled; and
measuring here goes through the same per-exit measurement."""

import json
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest

from edgeexit.bundle import InputSpec, Manifest, SegmentSpec
from edgeexit.calibrate import ExitTable, evaluate, load_profile_costs
from edgeexit.calibrate.pipeline import CalibrateOptions, measure_costs
from edgeexit.data import Dataset
from edgeexit.energy import NONE
from edgeexit.energy.common import NoMeter
from edgeexit.errors import CalibrationError, EdgeExitError
from edgeexit.targets import load_target


def manifest(n=3):
    segments = tuple(
        SegmentSpec(f"segment_{i:02d}.onnx", f"{i:064d}", ("x",), (), f"l{i}", f"s{i}")
        for i in range(n)
    )
    return Manifest((InputSpec("x", "float32", ("batch", 4)),), segments, "confidence",
                    (float("inf"),) * n)  # fmt: skip


def profile_doc(energy_mj, *, measured, batch_size=1):
    return {
        "format": "edgeexit.profile/1",
        "target": "rpi5",
        "precision": "fp32",
        "energy_source": "rpi5-pmic" if measured else "none",
        "energy_measured": measured,
        "power_model_w": {"idle": 2.0, "active": 5.0},
        "batch_size": batch_size,
        "repeats": 10,
        "warmup": 1,
        "providers": ["CPUExecutionProvider"],
        "onnxruntime": "1.0",
        "platform": "test",
        "segments": [
            {
                "index": i,
                "file": f"segment_{i:02d}.onnx",
                "sha256": f"{i:064d}",
                "latency_ms": {"median": 1.0 + i, "p95": 2.0 + i, "mean": 1.5, "min": 0.5},
                "energy_mj": e,
                "power_w": None,
            }
            for i, e in enumerate(energy_mj)
        ],
    }


EXIT_MS = (0.2, 0.5, 1.1)  # what a call leaving at exit i costs, overhead included


def with_exits(doc, energy_mj=(None, None, None)):
    """The profile plus an ``exits`` block whose robust means are EXIT_MS."""
    doc["exits"] = [
        {
            "index": i,
            "latency_ms": {
                "median": 9.0,
                "p95": 2 * ms,
                "mean": 9.0,
                "min": 0.1,
                "robust_mean": ms,
            },  # fmt: skip
            "energy_mj": e,
            "power_w": None,
        }
        for i, (ms, e) in enumerate(zip(EXIT_MS, energy_mj))
    ]
    return doc


def four_samples_leaving_at_0_0_1_2() -> ExitTable:
    """Scores >= 0.5 leave: samples 0, 1 at exit 0, sample 2 at exit 1, sample 3 at 2."""
    scores = np.array([[0.9, 0.8, 0.1, 0.1], [0.0, 0.0, 0.7, 0.2], [0.0, 0.0, 0.0, 0.3]])
    predictions = np.zeros((3, 4), dtype=int)
    return ExitTable.from_predictions(predictions, scores, np.zeros(4, dtype=int))


def write(tmp_path, doc):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return path


def test_measured_energy_is_per_sample_and_labeled(tmp_path):
    doc = profile_doc([4.0, 8.0, 2.0], measured=True, batch_size=2)
    costs = load_profile_costs(write(tmp_path, doc), manifest())
    assert costs.latency_ms == (1.0, 3.0, 6.0) and costs.p95_latency_ms == (2.0, 5.0, 9.0)
    assert costs.energy_mj == (2.0, 6.0, 7.0)
    assert costs.energy.label == "measured (rpi5-pmic)"
    assert list(costs.latency_ms) == [1.0, 3.0, 6.0]


def test_unmeasured_energy_is_modeled_from_profile_power(tmp_path):
    costs = load_profile_costs(write(tmp_path, profile_doc([None] * 3, measured=False)),
                               manifest())  # fmt: skip
    assert costs.energy.label == "modeled"
    assert costs.energy_mj == pytest.approx((5.0, 15.0, 30.0))  # 5 W x ms, per exit


def test_modeled_energy_names_the_power_model_it_used(tmp_path):
    # calibrating on the host (x86-cpu) with a Pi's profile: the Pi's power model, named
    unmeasured = profile_doc([None] * 3, measured=False)
    costs = load_profile_costs(write(tmp_path, unmeasured), manifest(), active_power_w=10.0,
                               power_model="x86-cpu")  # fmt: skip
    assert costs.energy_origin == "modeled from rpi5's power model (5 W)"
    for doc in (unmeasured, with_exits(profile_doc([None] * 3, measured=False))):
        doc["power_model_w"] = {"idle": 0.0, "active": 0.0}  # profiled with no power model
        costs = load_profile_costs(write(tmp_path, doc), manifest(), active_power_w=10.0,
                                   power_model="x86-cpu")  # fmt: skip
        assert costs.energy_origin == "modeled from x86-cpu's power model (10 W)"
        assert costs.energy_mj[0] == pytest.approx(10.0 * costs.latency_ms[0])
    measured = load_profile_costs(write(tmp_path, profile_doc([4.0, 8.0, 2.0], measured=True)),
                                  manifest(), power_model="x86-cpu")  # fmt: skip
    assert measured.energy_origin == "measured (rpi5-pmic)"


def test_profile_of_other_bundle_or_garbage_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="another bundle"):
        load_profile_costs(write(tmp_path, profile_doc([None] * 2, measured=False)), manifest())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgeExitError, match="not readable JSON"):
        load_profile_costs(tmp_path / "bad.json", manifest())


def test_per_exit_costs_give_the_exact_expected_latency(tmp_path):
    doc = with_exits(profile_doc([None] * 3, measured=False))
    costs = load_profile_costs(write(tmp_path, doc), manifest())
    assert costs.source == f"profile {tmp_path / 'profile.json'}"
    assert list(costs.latency_ms) == pytest.approx(EXIT_MS)
    assert list(costs.p95_latency_ms) == pytest.approx([0.4, 1.0, 2.2])
    point = evaluate(four_samples_leaving_at_0_0_1_2(), costs, np.full(3, 0.5))
    assert point.exit_shares == pytest.approx((0.5, 0.25, 0.25))
    assert point.mean_latency_ms == pytest.approx(0.5 * 0.2 + 0.25 * 0.5 + 0.25 * 1.1)
    assert point.energy_mj == pytest.approx(5.0 * point.mean_latency_ms)  # modeled, 5 W
    assert costs.energy.label == "modeled"


def test_per_exit_measured_energy_is_per_sample(tmp_path):
    doc = with_exits(profile_doc([1.0] * 3, measured=True, batch_size=2), (2.0, 6.0, 8.0))
    costs = load_profile_costs(write(tmp_path, doc), manifest())
    assert list(costs.energy_mj) == pytest.approx([1.0, 3.0, 4.0])
    assert costs.energy.label == "measured (rpi5-pmic)"


def test_old_profile_without_exits_falls_back_to_the_segment_sum_and_says_so(tmp_path):
    costs = load_profile_costs(write(tmp_path, profile_doc([None] * 3, measured=False)),
                               manifest())  # fmt: skip
    assert list(costs.latency_ms) == [1.0, 3.0, 6.0]  # medians 1, 2, 3 summed
    assert "segments summed" in costs.source and "overhead left out" in costs.source
    point = evaluate(four_samples_leaving_at_0_0_1_2(), costs, np.full(3, 0.5))
    assert point.mean_latency_ms == pytest.approx(0.5 * 1.0 + 0.25 * 3.0 + 0.25 * 6.0)


class ForcedExitRuntime:
    """Stands in for Runtime: a call costs the fixed figure of the first exit whose
    threshold is -inf, so the measured costs are known exactly."""

    num_exits = 3
    bodies_in_use = frozenset({0, 1})  # a deployed runtime: heads are not timed apart

    def __init__(self):
        self.target = load_target("x86-cpu")
        self.calls = []

    def run(self, inputs, *, thresholds):
        exit_index = list(thresholds).index(-np.inf)
        self.calls.append(exit_index)
        return SimpleNamespace(latency_ms=EXIT_MS[exit_index])


def test_measuring_here_uses_the_per_exit_measurement():
    runtime = ForcedExitRuntime()
    dataset = Dataset((np.zeros((10, 4), dtype=np.float32),), None)
    with mock.patch("edgeexit.calibrate.pipeline.get_meter", autospec=True, return_value=NoMeter()):
        options = CalibrateOptions(timing_samples=5, timing_calls=5, timing_rounds=2)
        costs = measure_costs(runtime, dataset, options)
    assert list(costs.latency_ms) == pytest.approx(EXIT_MS)
    assert costs.source == "measured here (batch 1)" and costs.head_ms is None
    assert costs.energy.label == "modeled"  # no sensor: x86-cpu's 10 W power model
    assert list(costs.energy_mj) == pytest.approx([10 * ms for ms in EXIT_MS])
    timed = runtime.calls[-2 * 5 * 3 :]  # 2 rounds x 5 samples x 3 exits after the warm-up
    assert sorted(set(timed)) == [0, 1, 2] and timed[:5] == [0] * 5 and timed[-5:] == [0] * 5


class NoisyRuntime(ForcedExitRuntime):
    """A shared machine: every call costs its exit's figure, except in 'contended'
    stretches (a fixed pattern of calls), where everything costs twice as much."""

    def __init__(self, contended_every: int, contended_for: int):
        super().__init__()
        self.every, self.length = contended_every, contended_for

    def run(self, inputs, *, thresholds):
        result = super().run(inputs, thresholds=thresholds)
        slow = len(self.calls) % self.every < self.length
        return SimpleNamespace(latency_ms=result.latency_ms * (2.0 if slow else 1.0))


def test_costs_plan_with_the_median_round_and_say_how_noisy_they_were():
    from edgeexit.calibrate.costs import exit_costs
    from edgeexit.measure.profiling import measure_exit_costs

    runtime = NoisyRuntime(contended_every=240, contended_for=60)  # slow a quarter of the time
    exits = measure_exit_costs(runtime, [()], rounds=40, calls=8, warmup=0)
    robust = [e.latency_ms.robust_mean for e in exits]
    assert robust == pytest.approx(EXIT_MS)  # slow stretches under half the rounds: unmoved
    assert all(e.latency_ms.robust_mean >= e.latency_ms.uncontended for e in exits)
    assert all(e.latency_ms.spread >= 0 for e in exits)
    costs = exit_costs(exits, batch_size=1, energy=NONE, power_w=0.0, source="here")
    assert list(costs.latency_ms) == pytest.approx(robust)


def test_the_full_model_as_deployed_is_timed_with_the_exits_and_is_the_reference():
    from edgeexit.calibrate.costs import exit_costs
    from edgeexit.measure.profiling import measure_exit_costs

    class PlainGraph(ForcedExitRuntime):  # every early exit disabled: one call, cheaper
        def run(self, inputs, *, thresholds):
            assert thresholds is None  # the deployed thresholds: all "never"
            self.calls.append("full")
            return SimpleNamespace(latency_ms=0.8 * EXIT_MS[-1])

    runtime, plain = ForcedExitRuntime(), PlainGraph()
    timed = measure_exit_costs(runtime, [()], rounds=4, calls=3, warmup=0, full=plain)
    assert len(timed) == 4 and timed[-1].index == 3 and len(plain.calls) == 4 * 3
    costs = exit_costs(timed[:3], batch_size=1, energy=NONE, power_w=10.0, source="here",
                       full=timed[3])  # fmt: skip
    assert costs.full_ms == pytest.approx(0.8 * EXIT_MS[-1])
    assert costs.per_exit_latency(np.zeros((1, 3)))[0, -1] == pytest.approx(EXIT_MS[-1])


def test_rounds_are_added_while_the_costs_scatter_and_stop_once_they_settle():
    from edgeexit.measure.profiling import measure_exit_costs

    quiet = ForcedExitRuntime()
    measure_exit_costs(quiet, [()], rounds=6, calls=4, warmup=0, until_spread=0.02)
    assert len(quiet.calls) == 6 * 4 * 3  # identical calls: settled at the minimum
    noisy = NoisyRuntime(contended_every=7, contended_for=3)
    measure_exit_costs(noisy, [()], rounds=6, calls=4, warmup=0, until_spread=0.02,
                       max_rounds=60)  # fmt: skip
    assert 6 * 4 * 3 < len(noisy.calls) <= 60 * 4 * 3
    assert len(noisy.calls) % (2 * 4 * 3) == 0  # whole pairs of rounds: the order stays balanced


def test_median_spread_is_a_relative_interval_half_width():
    from edgeexit.measure.rounds import median_spread

    assert median_spread([1.0] * 10) == 0.0
    assert median_spread([1.0, 2.0]) == float("inf")  # too few rounds to say
    wide = median_spread(np.linspace(0.5, 1.5, 41))
    narrow = median_spread(np.linspace(0.95, 1.05, 41))
    assert wide == pytest.approx(10 * narrow) and 0 < narrow < 0.05


def test_old_profiles_without_the_new_figures_still_load(tmp_path):
    from edgeexit.measure.cost_profile import ExitLatency, _figures

    old = {"median": 1.0, "p95": 2.0, "mean": 1.1, "min": 0.9, "robust_mean": 1.05}
    latency = ExitLatency(**_figures(old, ExitLatency))
    assert latency.spread == 0.0 and latency.uncontended == 0.0
    with pytest.raises(ValueError, match="no 'robust_mean'"):
        _figures({k: v for k, v in old.items() if k != "robust_mean"}, ExitLatency)


def test_noisy_or_clipped_costs_make_the_report_advise_a_profile():
    from calibrate_synthetic import synthetic_table

    from edgeexit.calibrate import Budget, ExitCosts
    from edgeexit.calibrate.pipeline import build_report

    ms = np.array([1.0, 2.0, 1.9, 4.0])  # exit 2 measured cheaper than exit 1: noise
    table = synthetic_table(400, seed=1)
    calm = ExitCosts.from_measured(ms + [0, 0, 0.2, 0], ms, None, NONE, "here", noise=0.01)
    assert calm.clipped == 0
    assert build_report(table, calm, Budget(latency_ms=3.0)).too_noisy is None
    noisy = ExitCosts.from_measured(ms, ms, None, NONE, "here", noise=0.12)
    assert noisy.clipped == 1
    advice = build_report(table, noisy, Budget(latency_ms=3.0)).too_noisy
    assert "+-12.0%" in advice and "1 exit(s) measured cheaper" in advice
    assert "edgeexit profile" in advice
