"""Guarantee mode: Learn-then-Test (Angelopoulos et al. 2021), as CALM uses it.

Goal: with probability >= ``confidence`` over the calibration draw, the chosen thresholds
have risk (disagreement with the final exit, or error) <= ``risk`` on the population.

1. Split the calibration samples at random: a *path* half and a *test* half.
2. On the path half, build a sequence of per-exit threshold vectors ordered from strict to
   loose: the fastest thresholds whose path-half risk is <= a, for a rising list of a.
   The order depends only on the path half, so it is fixed before the test half is seen.
3. Fixed-sequence testing on the test half: walk the path, testing H0 "risk > target" with
   the exact binomial tail p-value (losses are 0/1, so the binomial tail is valid and tighter
   than Hoeffding-Bentkus); stop at the first p-value above delta = 1 - confidence.
   Every rejected hypothesis is certified; family-wise error is <= delta.
4. Among the certified vectors take the fastest on the whole calibration set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeexit.calibrate.budget import Budget
from edgeexit.calibrate.costs import SegmentCosts
from edgeexit.calibrate.search import (
    ExitTable,
    Objective,
    OperatingPoint,
    best,
    coordinate_descent,
    evaluate,
    exit_indices,
    shared_sweep,
)
from edgeexit.errors import CalibrationError


@dataclass(frozen=True)
class Certificate:
    """What guarantee mode certified and how."""

    point: OperatingPoint  # expected figures on the whole calibration set
    risk: float
    confidence: float
    metric: str
    test_risk: float  # empirical risk of the chosen thresholds on the test half
    p_value: float
    certified: int  # how many path points were certified
    path_length: int
    test_samples: int

    def to_json(self) -> dict:
        return {
            "method": "learn-then-test (fixed-sequence, binomial tail)",
            "risk": self.risk,
            "confidence": self.confidence,
            "metric": self.metric,
            "test_risk": self.test_risk,
            "p_value": self.p_value,
            "certified": self.certified,
            "path_length": self.path_length,
            "test_samples": self.test_samples,
        }


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space so large n does not underflow."""
    if k >= n:
        return 1.0
    if k < 0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(j + 1)
        - math.lgamma(n - j + 1)
        + j * log_p
        + (n - j) * log_q
        for j in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def losses(table: ExitTable, thresholds: np.ndarray, metric: str) -> np.ndarray:
    """0/1 loss per sample for one threshold vector."""
    flags = table.agrees if metric == "disagreement" else table.correct
    exits = exit_indices(table.scores, thresholds)
    return ~flags[exits, np.arange(table.num_samples)]


def threshold_path(
    table: ExitTable, costs: SegmentCosts, metric: str, risk: float, length: int
) -> list[np.ndarray]:
    """Strict-to-loose per-exit thresholds: fastest with path-half risk <= a, a rising."""
    base_risk = float(losses(table, np.full(table.num_exits, np.inf), metric).mean())
    path = [np.full(table.num_exits, np.inf)]  # everyone to the final exit: the safest point
    view = _loss_view(table, metric)
    for level in np.linspace(0.0, 2.0 * risk, length):
        # 'Accuracy' here is 1 - loss, so a drop of (level - base_risk) caps the loss at level.
        drop = max(0.0, level - base_risk)
        objective = Objective(Budget(max_accuracy_drop=min(drop, 0.999)), 1.0 - base_risk - drop)
        start = best(shared_sweep(view, costs, grid_size=33), objective)
        point = coordinate_descent(view, costs, objective, start, grid_size=32, max_sweeps=3)
        if objective.feasible(point) and not any(np.array_equal(point.thresholds, p) for p in path):
            path.append(np.asarray(point.thresholds))
    return path


def _loss_view(table: ExitTable, metric: str) -> ExitTable:
    """The table with 'correct' meaning 'no loss' under ``metric``."""
    flags = table.agrees if metric == "disagreement" else table.correct
    return ExitTable(table.scores, flags, table.agrees, table.labeled)


def certify(
    table: ExitTable,
    costs: SegmentCosts,
    budget: Budget,
    *,
    seed: int = 0,
    path_length: int = 16,
) -> Certificate:
    """Learn-then-Test thresholds for ``budget.risk`` at ``budget.confidence``."""
    if budget.risk is None:
        raise CalibrationError("guarantee mode needs --risk")
    if budget.risk_metric == "error" and not table.labeled:
        raise CalibrationError("--risk-metric error needs labels 'y' in the data")
    n = table.num_samples
    if n < 20:
        raise CalibrationError(f"guarantee mode needs at least 20 calibration samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    path_half, test_half = table.take(order[: n // 2]), table.take(order[n // 2 :])
    path = threshold_path(path_half, costs, budget.risk_metric, budget.risk, path_length)
    delta = 1.0 - budget.confidence
    certified: list[tuple[np.ndarray, float, float]] = []
    for thresholds in path:
        lost = losses(test_half, thresholds, budget.risk_metric)
        p_value = binomial_cdf(int(lost.sum()), len(lost), budget.risk)
        if p_value > delta:
            break  # fixed-sequence testing stops at the first hypothesis it cannot reject
        certified.append((thresholds, float(lost.mean()), p_value))
    if not certified:
        raise CalibrationError(
            f"no thresholds can be certified for {budget.describe()} with "
            f"{test_half.num_samples} test samples; even the final exit alone fails. "
            "Use more calibration data, a larger --risk or a lower --confidence"
        )
    points = [(evaluate(table, costs, t), r, p) for t, r, p in certified]
    point, test_risk, p_value = min(points, key=lambda x: x[0].mean_latency_ms)
    return Certificate(
        point=point,
        risk=budget.risk,
        confidence=budget.confidence,
        metric=budget.risk_metric,
        test_risk=test_risk,
        p_value=p_value,
        certified=len(certified),
        path_length=len(path),
        test_samples=test_half.num_samples,
    )
