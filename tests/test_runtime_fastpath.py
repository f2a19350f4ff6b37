"""The forced-last fast path of Runtime.run and the per-call energy without a window.

The fast path (inputs of the shapes and dtypes of an earlier call, every threshold before
the last inf, no sensor) skips the general checks and builds its Result before the segments
run, so these tests pin that it gives what the general path gives (one input or several),
still refuses bad inputs, survives the buffers growing, that its lazily derived latency,
segment times and energy are consistent, and that energy is still labeled by its source:
modeled from power × latency, measured only by a sensor.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from unittest import mock

import numpy as np
import pytest
from runtime_bundles import exported, without_plain_graph

from edgeexit.energy import EnergyReading, ModeledMeter, NoMeter
from edgeexit.energy.common import EnergyMeter
from edgeexit.errors import InputError
from edgeexit.runtime import Runtime


@pytest.fixture(scope="module", params=["plain graph", "segment chain"])
def digits(request, tmp_path_factory):
    """The exported bundle runs its plain graph (one call); a copy without one, its chain
    of segments (a body for each early exit): the fast path is the same for both."""
    ex = exported("digits_resnet")
    if request.param == "segment chain":
        chain = without_plain_graph(ex.bundle, tmp_path_factory.mktemp("chain") / "b")
        ex = dataclasses.replace(ex, bundle=chain)
    rt = Runtime(ex.bundle, threads=1)
    assert rt.runs_plain_graph == (request.param == "plain graph")
    assert all(math.isinf(t) for t in rt.manifest.thresholds)  # exported: forced last
    return ex, rt


def timed(segment_ms) -> list[float]:
    """The segment times measured one by one (NaN: the segment ran inside the plain graph,
    whose time is the last segment's)."""
    return [ms for ms in segment_ms if not math.isnan(ms)]


def reference_last_logits(rt: Runtime, x: np.ndarray) -> np.ndarray:
    return rt.run_all_exits(x).logits[-1]


def test_fast_path_matches_the_general_path(digits):
    ex, rt = digits
    x = ex.inputs[0]
    ref = reference_last_logits(rt, x)
    last = rt.num_exits - 1
    for b in range(3):
        row = x[b : b + 1]
        first, second = rt.run(row), rt.run(row)  # the second call hits the cached plan
        general = rt.run(row, thresholds=[math.inf] * rt.num_exits)
        for out in (first, second, general):
            np.testing.assert_array_equal(out.logits[0], ref[b])
            assert out.exit_index.tolist() == [last]
            assert len(out.segment_ms) == rt.num_exits and all(
                ms > 0 for ms in timed(out.segment_ms)
            )
            assert 0 < sum(timed(out.segment_ms)) <= out.latency_ms
            assert len(timed(out.segment_ms)) == len(rt.sessions)
    batch = rt.run(x)
    np.testing.assert_array_equal(batch.logits, ref)


def test_fast_path_survives_the_buffers_growing(digits):
    ex, rt = digits
    x = ex.inputs[0]
    ref = reference_last_logits(rt, x)
    rt.run(x[:1])
    big = np.concatenate([x] * 12)  # more rows than any buffer so far: they are reallocated
    np.testing.assert_array_equal(rt.run(big).logits[: len(x)], ref)
    np.testing.assert_array_equal(rt.run(x[1:2]).logits[0], ref[1])


def test_fast_path_still_refuses_bad_inputs(digits):
    ex, rt = digits
    x = ex.inputs[0][:1]
    rt.run(x)  # a plan for this shape exists now
    with pytest.raises(InputError, match="dtype float64"):
        rt.run(x.astype(np.float64))
    with pytest.raises(InputError, match="shape"):
        rt.run(np.zeros((1, 1, 8, 9), dtype=np.float32))
    with pytest.raises(InputError, match="empty batch"):
        rt.run(x[:0])


def test_fast_path_reads_non_contiguous_inputs(digits):
    ex, rt = digits
    x = ex.inputs[0]
    ref = reference_last_logits(rt, x)
    strided = x[::2]
    assert not strided.flags.c_contiguous
    rt.run(np.ascontiguousarray(strided))
    np.testing.assert_array_equal(rt.run(strided).logits, ref[::2])


@pytest.fixture(scope="module")
def bert():
    ex = exported("tiny_bert")
    return ex, Runtime(ex.bundle, threads=1)


def test_multi_input_fast_path_matches_the_general_path(bert):
    ex, rt = bert
    ids, mask = ex.inputs
    for b in range(3):
        rows = [ids[b : b + 1], mask[b : b + 1]]
        ref = reference_last_logits(rt, rows)  # batch 1 too: GEMM blocking follows the batch
        named = dict(zip((i.name for i in rt.manifest.inputs), rows))
        first, as_list, as_tuple = rt.run(named), rt.run(rows), rt.run(tuple(rows))
        for out in (first, as_list, as_tuple):
            np.testing.assert_array_equal(out.logits, ref)
            assert out.exit_index.tolist() == [rt.num_exits - 1]
        with mock.patch(
            "edgeexit.runtime.runtime.check_inputs", side_effect=AssertionError("slow path")
        ):
            np.testing.assert_array_equal(rt.run(rows).logits, ref)  # really the fast path


def test_unpickled_arrays_take_the_fast_path(digits, bert):
    """An array sent through multiprocessing (pickled) carries its own dtype object, equal
    to numpy's builtin one but not it: still the fast path. A byte-swapped one is not equal,
    so it is checked (and refused) as before."""
    for ex, rt in (digits, bert):
        rows = [x[:2] for x in ex.inputs]
        ref = rt.run(rows).logits  # makes the plan
        sent = pickle.loads(pickle.dumps(rows))
        assert sent[0].dtype == rows[0].dtype and sent[0].dtype is not rows[0].dtype
        with mock.patch(
            "edgeexit.runtime.runtime.check_inputs", side_effect=AssertionError("slow path")
        ):
            np.testing.assert_array_equal(rt.run(sent).logits, ref)
            if len(sent) == 1:
                np.testing.assert_array_equal(rt.run(sent[0]).logits, ref)
        swapped = [sent[0].astype(sent[0].dtype.newbyteorder()), *sent[1:]]
        with pytest.raises(InputError, match="has dtype >"):
            rt.run(swapped)
        if len(swapped) == 1:
            with pytest.raises(InputError, match="has dtype >"):
                rt.run(swapped[0])


def test_multi_input_fast_path_still_checks_every_input(bert):
    ex, rt = bert
    ids, mask = (x[:2] for x in ex.inputs)
    rt.run([ids, mask])  # a plan for this first-input shape exists now
    with pytest.raises(InputError, match="attention_mask.*int32"):
        rt.run([ids, mask.astype(np.int32)])
    with pytest.raises(InputError, match="attention_mask"):
        rt.run([ids, mask[:, :-1]])
    with pytest.raises(InputError, match="2 inputs|expected 2"):
        rt.run([ids])


def test_latency_and_segment_times_come_from_the_same_clock(digits):
    ex, rt = digits
    x = ex.inputs[0][:1]
    rt.run(x)
    for out in (rt.run(x), rt.run(x, thresholds=[0.5] * rt.num_exits)):
        assert out.latency_ms == out.latency_ms  # derived once, then fixed
        assert 0 < sum(timed(out.segment_ms)) <= out.latency_ms < 10_000


def test_modeled_energy_is_power_times_latency_and_labeled_modeled(digits):
    ex, _ = digits
    with mock.patch("edgeexit.runtime.runtime.get_meter", return_value=ModeledMeter(7.5)):
        rt = Runtime(ex.bundle, threads=1)
    x = ex.inputs[0][:1]
    for out in (rt.run(x), rt.run(x), rt.run(x, thresholds=[0.5] * rt.num_exits)):
        assert out.energy_mj == pytest.approx(7.5 * out.latency_ms)  # W × ms = mJ
        assert out.energy_source == "modeled" and not out.energy_measured
        assert out.energy_label == "modeled"


class CountingSensor(EnergyMeter):
    """A fake sensor: 5 mJ per window, counting the windows opened."""

    source = "fake-sensor"
    measured = True

    def __init__(self) -> None:
        self.windows = 0

    def begin_window(self) -> None:
        self.windows += 1

    def end_window(self) -> EnergyReading:
        return EnergyReading(5.0, self.provenance, 0.001)


def test_a_sensor_gets_a_real_window_every_call(digits):
    ex, _ = digits
    sensor = CountingSensor()
    with mock.patch("edgeexit.runtime.runtime.get_meter", return_value=sensor):
        rt = Runtime(ex.bundle, threads=1)
    x = ex.inputs[0][:1]
    outs = [rt.run(x) for _ in range(3)]
    assert sensor.windows == 3
    for out in outs:
        assert (out.energy_mj, out.energy_source, out.energy_measured) == (5.0, "fake-sensor", True)
        assert out.energy_label == "measured (fake-sensor)"


def test_no_meter_reports_no_figure(digits):
    ex, _ = digits
    with mock.patch("edgeexit.runtime.runtime.get_meter", return_value=NoMeter()):
        rt = Runtime(ex.bundle, threads=1)
    x = ex.inputs[0][:1]
    for out in (rt.run(x), rt.run(x), rt.run(x, thresholds=[0.5] * rt.num_exits)):
        assert out.energy_mj is None and out.energy_source == "none"
        assert out.energy_label == "none"


def test_meters_say_whether_they_need_a_window():
    assert not ModeledMeter(4.0).needs_window and not NoMeter().needs_window
    assert ModeledMeter(4.0).energy_mj_for(0.5) == pytest.approx(2000.0)  # 4 W × 0.5 s
    assert NoMeter().energy_mj_for(0.5) is None
    with pytest.raises(NotImplementedError, match="open a window"):
        CountingSensor().energy_mj_for(0.5)


def test_thresholds_changed_in_place_take_effect(digits):
    ex, rt = digits
    x = ex.inputs[0][:2]
    thresholds = [math.inf] * rt.num_exits
    assert rt.run(x, thresholds=thresholds).exit_index.tolist() == [rt.num_exits - 1] * 2
    thresholds[1] = -1.0  # every sample now leaves at exit 1
    assert rt.run(x, thresholds=thresholds).exit_index.tolist() == [1, 1]
    thresholds[1] = math.nan
    with pytest.raises(InputError, match="NaN"):
        rt.run(x, thresholds=thresholds)
    thresholds[1] = np.array([0.5, 0.6])
    with pytest.raises(InputError, match="numbers"):
        rt.run(x, thresholds=thresholds)


def test_early_exit_calls_take_the_fast_path_and_match_it(digits):
    ex, rt = digits
    x = ex.inputs[0]
    scores = rt.run_all_exits(x).scores  # medians: about half the samples leave at each
    thresholds = [float(np.median(s)) for s in scores[:-1]] + [math.inf]
    assert len(set(rt.run(x, thresholds=thresholds).exit_index.tolist())) >= 3
    for rows in (x[:1], x[:7], x[7:8]):
        first = rt.run(rows, thresholds=thresholds)  # checked in full, makes the plan
        with mock.patch(
            "edgeexit.runtime.runtime.check_inputs", side_effect=AssertionError("slow path")
        ):
            again = rt.run(rows, thresholds=thresholds)
        np.testing.assert_array_equal(again.logits, first.logits)
        np.testing.assert_array_equal(again.exit_index, first.exit_index)
        assert len(again.segment_ms) == rt.num_exits
        for b in range(len(rows)):  # and each sample as it is alone
            alone = rt.run(rows[b : b + 1], thresholds=thresholds)
            np.testing.assert_array_equal(alone.logits[0], again.logits[b])
            assert alone.exit_index[0] == again.exit_index[b]
