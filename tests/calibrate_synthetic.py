"""Synthetic exit tables for the calibration tests: samples of random difficulty, later
exits more accurate, scores that track correctness (like softmax confidence does)."""

from __future__ import annotations

import numpy as np

from edgeexit.calibrate import ExitCosts, ExitTable
from edgeexit.energy import MODELED


def synthetic_exits(n: int, *, seed: int = 0, exits: int = 4, classes: int = 10):
    """(predictions [E, N], scores [E, N], labels [N]), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    difficulty = rng.uniform(0.0, 1.0, n)
    predictions, scores = [], []
    for i in range(exits):
        skill = (i + 1) / exits
        p_correct = np.clip(1.2 * skill - difficulty + 0.4, 0.02, 0.995)
        right = rng.uniform(size=n) < p_correct
        wrong = (labels + rng.integers(1, classes, n)) % classes
        predictions.append(np.where(right, labels, wrong))
        scores.append(np.clip(p_correct + rng.normal(0.0, 0.1, n), 0.0, 1.0))
    return np.array(predictions), np.array(scores), labels


def synthetic_table(n: int = 1500, *, seed: int = 0, labeled: bool = True) -> ExitTable:
    predictions, scores, labels = synthetic_exits(n, seed=seed)
    return ExitTable.from_predictions(predictions, scores, labels if labeled else None)


def unit_costs(exits: int = 4, *, power_w: float = 10.0) -> ExitCosts:
    """Every segment 1 ms (p95 1.2 ms): exit i costs i + 1 ms; energy modeled at ``power_w``."""
    depth = [float(i + 1) for i in range(exits)]
    return ExitCosts(
        latency_ms=tuple(depth),
        p95_latency_ms=tuple(1.2 * d for d in depth),
        energy_mj=tuple(power_w * d for d in depth),
        energy=MODELED,
        source="synthetic",
    )
