"""PALBERT's Q-exit: each exit's gate is a halting probability, and a sample leaves once
the cumulative probability of having halted reaches the threshold. Decided in the runtime
(edgeexit.criteria.q_exit_update); checked against numpy, in a batch and alone."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.criteria import q_exit_update  # noqa: E402
from edgeexit.examples import digits_gated  # noqa: E402


def reference(gates: np.ndarray, thresholds) -> np.ndarray:
    """[exits, N] gate logits -> each sample's exit (numpy, from the definition)."""
    p = 1 / (1 + np.exp(-gates.astype(np.float64)))
    halted = 1 - np.cumprod(1 - p, axis=0)
    leaves = halted[:-1] >= np.asarray(thresholds[:-1])[:, None]
    return np.where(leaves.any(axis=0), leaves.argmax(axis=0), len(gates) - 1)


def test_the_update_is_the_cumulative_halting_probability():
    score = np.array([0.5, 0.1], dtype=np.float32)
    state = q_exit_update(None, None, score)
    state = q_exit_update(state, None, np.array([0.5, 0.1], dtype=np.float32))
    np.testing.assert_allclose(state[0], [0.75, 0.19], rtol=1e-6)


def test_q_exit_decisions_equal_numpy_in_a_batch_and_alone(tmp_path):
    torch.manual_seed(0)
    model = digits_gated().eval()
    x = torch.rand(40, 1, 8, 8)
    edgeexit.export(model, x[:2], tmp_path / "b", criterion="q-exit")
    rt = edgeexit.Runtime(tmp_path / "b", threads=1)
    with torch.no_grad():
        gates = np.stack([exit_(seg)[1].numpy() for seg, exit_ in _hidden(model, x)])
    every = rt.run_all_exits(x.numpy())
    halted = 1 - np.cumprod(1 - 1 / (1 + np.exp(-gates)), axis=0)
    np.testing.assert_allclose(every.scores, halted, atol=1e-5)
    # thresholds between the samples' values, away from ties, so rounding cannot decide
    thresholds = [
        float(np.median(every.scores[0])) + 1e-4,
        float(np.median(every.scores[1])) + 1e-4,
        np.inf,
    ]
    want = reference(gates, thresholds)
    assert len(set(want.tolist())) >= 2
    batch = rt.run(x.numpy(), thresholds=thresholds).exit_index
    alone = [
        int(rt.run(x[i : i + 1].numpy(), thresholds=thresholds).exit_index[0]) for i in range(40)
    ]
    assert batch.tolist() == want.tolist() == alone


def _hidden(model, x):
    out, carry = [], x
    for segment, exit_ in zip(model.segments, model.exits):
        carry = segment(carry)
        out.append((carry, exit_))
    return out
