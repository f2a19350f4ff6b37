"""Exit decisions of the runtime: against PyTorch, batch == alone, forced exits, patience."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_bundles import exported, torch_exit_logits

from edgeexit.runtime import Runtime

MODELS = ["digits_resnet", "digits_two_scale", "tiny_bert"]
# ONNX Runtime's own MatMul kernels give a sample ~1 ulp apart in a batch of 24 and alone
# (plain InferenceSession.run does the same), so batch == alone is bitwise only for models
# whose kernels are batch-invariant, as these convolution nets are.
BATCH_INVARIANT = {"digits_resnet", "digits_two_scale"}
ULP_ATOL = 1e-6


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    ex = exported(request.param)
    return ex, Runtime(ex.bundle, threads=1)


def assert_same_sample(alone, batch, b: int, thresholds, scores: np.ndarray, exact: bool) -> None:
    """Sample b run alone gives what it got in the batch (bitwise when ``exact``)."""
    if exact:
        assert alone.exit_index[0] == batch.exit_index[b]
        np.testing.assert_array_equal(alone.logits[0], batch.logits[b])
        return
    near = np.abs(scores[:, b] - np.asarray(thresholds)).min() <= ULP_ATOL
    assert near or alone.exit_index[0] == batch.exit_index[b]
    if alone.exit_index[0] == batch.exit_index[b]:
        np.testing.assert_allclose(alone.logits[0], batch.logits[b], atol=ULP_ATOL, rtol=0)


def softmax_max(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).max(axis=-1)


def reference_exits(scores: np.ndarray, thresholds) -> np.ndarray:
    """First exit with score >= threshold, else the last (docs/design.md, *The bundle*)."""
    leaving = scores[:-1] >= np.asarray(thresholds[:-1])[:, None]
    first = np.where(leaving.any(axis=0), leaving.argmax(axis=0), len(scores) - 1)
    return first


def test_exits_match_pytorch_reference(case):
    ex, rt = case
    ref_logits = torch_exit_logits(ex.model, ex.inputs)
    scores = softmax_max(ref_logits)
    thresholds = [float(np.quantile(s, 0.6)) for s in scores[:-1]] + [math.inf]
    result = rt.run(ex.inputs, thresholds=thresholds)
    expected = reference_exits(scores, thresholds)
    # Samples within float noise of a threshold may go either way between torch and ORT.
    margin = np.abs(scores[:-1] - np.asarray(thresholds[:-1])[:, None]).min(axis=0)
    clear = margin > 1e-4
    assert clear.sum() >= len(clear) // 2
    np.testing.assert_array_equal(result.exit_index[clear], expected[clear])
    assert len(set(result.exit_index.tolist())) > 1, "thresholds should spread the exits"
    taken = ref_logits[result.exit_index, np.arange(len(expected))]
    np.testing.assert_allclose(result.logits, taken, atol=1e-4)


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_batch_equals_alone_under_random_thresholds(case, data):
    ex, rt = case
    scores = rt.run_all_exits(ex.inputs).scores
    quantiles = data.draw(st.lists(st.floats(0, 1), min_size=rt.num_exits, max_size=rt.num_exits))
    thresholds = [float(np.quantile(s, q)) for s, q in zip(scores, quantiles)]
    batch = rt.run(ex.inputs, thresholds=thresholds)
    exact = ex.bundle.name.split("-")[0] in BATCH_INVARIANT
    for b in range(len(batch.exit_index)):
        alone = rt.run(tuple(x[b : b + 1] for x in ex.inputs), thresholds=thresholds)
        assert_same_sample(alone, batch, b, thresholds, scores, exact)


def test_forced_first_and_last_exits(case):
    ex, rt = case
    every = rt.run_all_exits(ex.inputs)
    first = rt.run(ex.inputs, thresholds=[-math.inf] * rt.num_exits)
    assert (first.exit_index == 0).all()
    np.testing.assert_array_equal(first.logits, every.logits[0])
    assert first.segment_ms[0] > 0 and all(ms == 0 for ms in first.segment_ms[1:])
    last = rt.run(ex.inputs, thresholds=[math.inf] * rt.num_exits)
    assert (last.exit_index == rt.num_exits - 1).all()
    if rt.runs_plain_graph:  # one graph: ONNX Runtime may fuse across the old boundaries
        np.testing.assert_allclose(last.logits, every.logits[-1], atol=1e-6, rtol=0)
    else:
        np.testing.assert_array_equal(last.logits, every.logits[-1])


def test_manifest_thresholds_apply_without_override(case):
    ex, rt = case
    assert all(math.isinf(t) for t in rt.manifest.thresholds)  # as exported
    result = rt.run(ex.inputs)
    assert (result.exit_index == rt.num_exits - 1).all()


def test_run_all_exits_matches_pytorch_and_reports_progress(case):
    ex, rt = case
    calls = []
    out = rt.run_all_exits(ex.inputs, batch_size=10, progress=lambda d, n: calls.append((d, n)))
    n = len(ex.inputs[0])
    assert calls == [(10, n), (20, n), (n, n)]
    ref = torch_exit_logits(ex.model, ex.inputs)
    assert out.logits.shape == ref.shape and out.logits.dtype == np.float32
    np.testing.assert_allclose(out.logits, ref, atol=1e-4)
    np.testing.assert_allclose(out.scores, softmax_max(ref), atol=1e-5)
    assert len(out.segment_ms_per_sample) == rt.num_exits
    assert all(ms > 0 for ms in out.segment_ms_per_sample)


def test_run_segment_chains_like_the_runtime(case):
    ex, rt = case
    every = rt.run_all_exits(ex.inputs)
    feeds = list(ex.inputs)
    for i in range(rt.num_exits):
        carry, logits, score = rt.run_segment(i, feeds)
        np.testing.assert_array_equal(logits, every.logits[i])
        np.testing.assert_array_equal(score, every.scores[i])
        feeds = carry
    assert carry == []


def patience_reference(logits: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """PABEE counters [E, N] and the exit each sample takes, from PyTorch's logits."""
    preds = logits.argmax(axis=-1)
    counters = np.zeros(preds.shape, dtype=np.float32)
    for i in range(1, len(preds)):
        counters[i] = np.where(preds[i] == preds[i - 1], counters[i - 1] + 1, 0)
    return counters, reference_exits(counters, thresholds)


@pytest.mark.parametrize("name", ["digits_resnet", "tiny_bert"])
def test_patience_counts_agreeing_exits(name):
    ex = exported(name, "patience")
    rt = Runtime(ex.bundle, threads=1)
    ref_logits = torch_exit_logits(ex.model, ex.inputs)
    taken = set()
    for thresholds in ([1, 1, 1, 1][: rt.num_exits], [2, 2, 2, 2][: rt.num_exits]):
        counters, expected = patience_reference(ref_logits, thresholds)
        result = rt.run(ex.inputs, thresholds=thresholds)
        np.testing.assert_array_equal(result.exit_index, expected)
        np.testing.assert_array_equal(rt.run_all_exits(ex.inputs).scores, counters)
        for b in range(len(expected)):  # the counter follows each sample as the batch shrinks
            alone = rt.run(tuple(x[b : b + 1] for x in ex.inputs), thresholds=thresholds)
            assert alone.exit_index[0] == result.exit_index[b]
        taken |= set(result.exit_index.tolist())
    assert len(taken) > 1, "the thresholds should send samples to several exits"


def test_patience_zero_leaves_at_the_first_exit():
    ex = exported("digits_resnet", "patience")
    rt = Runtime(ex.bundle, threads=1)
    assert (rt.run(ex.inputs, thresholds=[0, 0, 0, 0]).exit_index == 0).all()
