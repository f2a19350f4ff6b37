"""The runtime never gives a silently wrong answer: one precision for exit decisions, many
threads on one Runtime, NaN and inf inputs, and thresholds from a manifest."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from runtime_bundles import copy_bundle, exported

from edgeexit.bundle import round_threshold
from edgeexit.errors import InputError
from edgeexit.runtime import Runtime


@pytest.fixture(scope="module")
def resnet():
    ex = exported("digits_resnet", batch=64)
    return ex, Runtime(ex.bundle, threads=1)


def exit0_scores(rt: Runtime, x: np.ndarray) -> np.ndarray:
    return rt.run_all_exits(x).scores[0]


def test_a_batch_and_its_rows_alone_agree_at_thresholds_on_a_score(resnet):
    """The failure this guards against: with several rows numpy compared float32 scores,
    with one row Python compared doubles, so a float64 threshold within float32 rounding
    of a score (as calibrate's quantiles are) sent a sample to another exit alone."""
    ex, rt = resnet
    x = ex.inputs[0]
    scores = exit0_scores(rt, x).astype(np.float64)
    inf = [math.inf] * (rt.num_exits - 1)
    for j in range(0, len(x), 4):
        s = scores[j]
        for threshold in (s, s + 1e-9 * s, s - 1e-9 * s, np.nextafter(s, 2.0)):
            thresholds = [float(threshold), *inf]
            batch = rt.run(x, thresholds=thresholds)
            for k in range(len(x)):
                alone = rt.run(x[k : k + 1], thresholds=thresholds)
                assert alone.exit_index[0] == batch.exit_index[k], (j, k, threshold)
            # and the rule is the float32 one: rounded threshold vs float32 score
            rounded = round_threshold(float(threshold), np.dtype(np.float32))
            expected = (scores >= rounded).astype(int)
            np.testing.assert_array_equal(batch.exit_index == 0, expected == 1)


def test_thresholds_are_rounded_to_the_score_dtype_once(resnet, tmp_path):
    ex, _ = resnet
    bundle = copy_bundle(ex.bundle, tmp_path / "b")
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["thresholds"] = [0.1, 0.2, 0.3, None]
    (bundle / "manifest.json").write_text(json.dumps(doc))
    rt = Runtime(bundle)
    assert rt._thresholds[:3] == tuple(float(np.float32(t)) for t in (0.1, 0.2, 0.3))
    assert rt._thresholds[3] == math.inf
    assert rt._checked([0.7, 0.7, 0.7, 0.0])[0][0] == float(np.float32(0.7))


def test_one_runtime_from_many_threads_gives_every_thread_its_own_answer(resnet):
    ex, rt = resnet
    x = ex.inputs[0]
    settings = [
        (x[:1], [0.5, 0.5, 0.5, 0.0]),
        (x[:7], [0.9, 0.6, 0.3, 0.0]),
        (x[:32], None),
        (x[5:6], [math.inf, math.inf, math.inf, 0.0]),
        (x, [0.3, 0.9, 0.9, 0.0]),
    ]
    expected = [rt.run(xs, thresholds=t) for xs, t in settings]
    expected = [(r.exit_index.copy(), r.logits.copy()) for r in expected]
    wrong, errors = [], []

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).integers(0, len(settings), 600)
        try:
            for k in order:
                xs, t = settings[k]
                r = rt.run(xs, thresholds=t)
                exits, logits = expected[k]
                if not (np.array_equal(r.exit_index, exits) and np.array_equal(r.logits, logits)):
                    wrong.append(k)
        except Exception as err:  # (any error at all is a failure of this test)
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong, (errors[:1], len(wrong))


def test_calibration_passes_from_threads_do_not_mix(resnet):
    ex, rt = resnet
    x = ex.inputs[0]
    reference = rt.run_all_exits(x).scores
    results = []

    def worker() -> None:
        for _ in range(5):
            results.append(rt.run_all_exits(x, batch_size=16).scores)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 15
    for scores in results:
        np.testing.assert_array_equal(scores, reference)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused_naming_the_rows(resnet, bad):
    ex, rt = resnet
    x = ex.inputs[0][:6].copy()
    rt.run(x)  # warm: the next call with this shape takes the fast path
    x[2, 0, 3, 3] = bad
    x[4, 0, 0, 0] = bad
    with pytest.raises(
        InputError, match=r"input 'x' holds NaN or inf in 2 sample\(s\) \(rows 2, 4\)"
    ):
        rt.run(x)
    with pytest.raises(InputError, match=r"rows 2, 4"):
        rt.run([x])  # the sequence path
    with pytest.raises(InputError, match=r"rows 0"):
        rt.run(x[2:3])  # one row, checked path
    with pytest.raises(InputError, match=r"rows 2, 4"):
        rt.run_all_exits(x)


def test_a_finite_input_whose_sum_overflows_is_not_refused(resnet):
    ex, rt = resnet
    x = np.full((2, 1, 8, 8), 3e38, np.float32)  # finite, but the sum overflows
    result = rt.run(x)
    assert result.exit_index.shape == (2,)


def test_integer_inputs_are_not_checked_for_nan():
    ex = exported("tiny_bert")
    rt = Runtime(ex.bundle, threads=1)
    result = rt.run(ex.inputs)
    assert len(result.exit_index) == len(ex.inputs[0])
