"""Guarantee mode: Learn-then-Test (Angelopoulos et al. 2021), as CALM uses it.

Goal: with probability >= ``confidence`` over the calibration draw, the chosen thresholds
have risk <= a target on the population. Two budgets are certified this way:

- ``--risk R`` (guarantee mode): disagreement with the final exit, or the error, <= R;
- ``--max-accuracy-drop D``: accuracy lost against the final exit <= D. The loss counted
  is "the final exit is right and the early exit is wrong" (disagreement without labels).
  Samples an early exit gets right where the final exit is wrong would lower the drop; they
  are not counted, so the bound is conservative, but it stays an exact binomial one.

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

from dataclasses import dataclass

import numpy as np

from edgeexit.budget import Budget
from edgeexit.calibrate.caps import cap_p_value, cap_path, describe_caps, has_caps
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.search import (
    ExitTable,
    Objective,
    OperatingPoint,
    best,
    coordinate_descent,
    evaluate_many,
    exit_indices,
    shared_sweep,
)
from edgeexit.calibrate.tails import binomial_cdf
from edgeexit.errors import CalibrationError


@dataclass(frozen=True)
class PathPoint:
    """One threshold vector on the Learn-then-Test path, for the guarantee plot."""

    mean_latency_ms: float  # expected on the whole calibration set
    test_risk: float | None  # empirical risk on the test half; None: caps only, no risk
    p_value: float | None  # None: past the first failure, so never tested
    certified: bool

    @property
    def verdict(self) -> str:
        if self.p_value is None:
            return "not tested"
        return "certified" if self.certified else "not certified"

    def to_json(self) -> dict:
        return {
            "mean_latency_ms": self.mean_latency_ms,
            "test_risk": self.test_risk,
            "p_value": self.p_value,
            "certified": self.certified,
        }


@dataclass(frozen=True)
class Certificate:
    """What Learn-then-Test certified and how.

    ``risk``/``metric``: the risk certified (--risk, or the accuracy drop), None when only
    cost caps were; ``caps``: the cost caps certified, described ('' if none).
    ``procedure``: 'fixed-sequence' along a path that only gets riskier, or 'bonferroni'
    when a risk and caps pull in opposite directions along it."""

    point: OperatingPoint  # expected figures on the whole calibration set
    risk: float | None
    confidence: float
    metric: str | None
    test_risk: float | None  # empirical risk of the chosen thresholds on the test half
    p_value: float
    certified: int  # how many path points were certified
    path_length: int
    test_samples: int
    # The whole path. Points past the first failure were never tested (no p-value); their
    # test-half risk is still given so the plot shows where the path went.
    path: tuple[PathPoint, ...] = ()
    caps: str = ""
    procedure: str = "fixed-sequence"

    @property
    def what(self) -> str:
        """What is certified, in words: 'accuracy drop <= 0.01', 'mean latency <= 4 ms'."""
        parts = [] if self.metric is None else [f"{self.metric} <= {self.risk:g}"]
        return ", ".join(parts + ([self.caps] if self.caps else []))

    def to_json(self) -> dict:
        return {
            "method": f"learn-then-test ({self.procedure}; binomial tail for 0/1 losses, "
            "Hoeffding for mean costs)",
            "certified_budget": self.what,
            "risk": self.risk,
            "confidence": self.confidence,
            "metric": self.metric,
            "caps": self.caps,
            "test_risk": self.test_risk,
            "p_value": self.p_value,
            "certified": self.certified,
            "path_length": self.path_length,
            "test_samples": self.test_samples,
            "path": [p.to_json() for p in self.path],
        }


DROP = "accuracy drop"  # the metric certified for --max-accuracy-drop


def risk_target(budget: Budget) -> tuple[float, str] | None:
    """(target, metric) that ``budget`` asks to certify, or None (cost caps only)."""
    if budget.risk is not None:
        return budget.risk, budget.risk_metric
    if budget.max_accuracy_drop is not None:
        return budget.max_accuracy_drop, DROP
    return None


def no_loss(table: ExitTable, metric: str) -> np.ndarray:
    """[E, N] True where leaving at exit i costs sample n nothing under ``metric``."""
    if metric == "disagreement":
        return table.agrees
    if metric == "error":
        return table.correct
    # Accuracy drop: lost only where the final exit was right and exit i is not.
    return table.correct | ~table.correct[-1][None, :]


def losses(table: ExitTable, thresholds: np.ndarray, metric: str) -> np.ndarray:
    """0/1 loss per sample for one threshold vector."""
    exits = exit_indices(table.scores, thresholds)
    return ~no_loss(table, metric)[exits, np.arange(table.num_samples)]


def threshold_path(
    table: ExitTable, costs: ExitCosts, metric: str, risk: float, length: int
) -> list[np.ndarray]:
    """Strict-to-loose per-exit thresholds: fastest with path-half risk <= a, a rising."""
    base_risk = float(losses(table, np.full(table.num_exits, np.inf), metric).mean())
    path = [np.full(table.num_exits, np.inf)]  # everyone to the final exit: the safest point
    view = _loss_view(table, metric)
    # Levels above the target never pass the test (its bound sits above the empirical risk),
    # so the path spends its steps below it, where the certified choice is made.
    for level in np.linspace(0.0, risk, length):
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
    return ExitTable(table.scores, no_loss(table, metric), table.agrees, table.labeled)


def certify(
    table: ExitTable,
    costs: ExitCosts,
    budget: Budget,
    *,
    seed: int = 0,
    path_length: int = 16,
) -> Certificate:
    """Learn-then-Test thresholds for every part of ``budget`` at ``budget.confidence``: its
    risk (--risk, or the accuracy drop) and its cost caps (``caps``: where samples leave,
    the costs taken as measured). A risk alone, or caps alone, walk their path with
    fixed-sequence testing; both together test every path point at delta / length
    (Bonferroni), since the path makes one riskier as it makes the other safer."""
    target, capped = risk_target(budget), has_caps(budget)
    if target is None and not capped:
        raise CalibrationError("nothing to certify: expected a budget")
    if target is not None and target[1] == "error" and not table.labeled:
        raise CalibrationError("`risk_metric` 'error' needs labels 'y' in the data")
    n = table.num_samples
    if n < 20:
        raise CalibrationError(f"a certified budget needs at least 20 calibration samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    path_half, test_half = table.take(order[: n // 2]), table.take(order[n // 2 :])
    if target is not None:
        path = threshold_path(path_half, costs, target[1], target[0], path_length)
    else:
        path = cap_path(path_half, costs, budget, path_length)
    if not path:
        raise CalibrationError(_nothing_certified(budget, test_half.num_samples))
    both = target is not None and capped
    delta = (1.0 - budget.confidence) / (len(path) if both else 1)
    points = evaluate_many(table, costs, np.stack(path))
    tested = _test_path(test_half, costs, budget, path, target, delta, stop_at_failure=not both)
    trail = tuple(
        PathPoint(p.mean_latency_ms, r, p_value, p_value is not None and p_value <= delta)
        for p, (r, p_value) in zip(points, tested)
    )
    certified = [i for i, p in enumerate(trail) if p.certified]
    if not certified:
        raise CalibrationError(_nothing_certified(budget, test_half.num_samples))
    if target is not None:  # a risk bound: the fastest thresholds that keep it
        chosen = min(certified, key=lambda i: points[i].mean_latency_ms)
    else:  # caps only: the most accurate thresholds within them, then the fastest
        chosen = max(certified, key=lambda i: (points[i].accuracy, -points[i].mean_latency_ms))
    return Certificate(
        point=points[chosen],
        risk=None if target is None else target[0],
        confidence=budget.confidence,
        metric=None if target is None else target[1],
        test_risk=trail[chosen].test_risk,
        p_value=float(trail[chosen].p_value),
        certified=len(certified),
        path_length=len(path),
        test_samples=test_half.num_samples,
        path=trail,
        caps=describe_caps(budget) if capped else "",
        procedure="bonferroni" if both else "fixed-sequence",
    )


def _nothing_certified(budget: Budget, samples: int) -> str:
    return (
        f"no thresholds can be certified for {budget.describe()} at confidence "
        f"{budget.confidence:g} with {samples} held-back samples. Use more calibration data, "
        "a looser budget or a lower `confidence`"
    )


def _test_path(test_half, costs, budget, path, target, delta, *, stop_at_failure: bool):
    """(test-half risk or None, p-value or None) per path point."""
    results, stopped = [], False
    for thresholds in path:
        risk, p_value = None, None
        if target is not None:
            ((risk, p_value),) = fixed_sequence_test(test_half, [thresholds], *target, delta)
        if not stopped and has_caps(budget):
            p_caps = cap_p_value(test_half, costs, thresholds, budget)
            p_value = p_caps if p_value is None else max(p_value, p_caps)
        if stopped:
            p_value = None
        stopped = stop_at_failure and (stopped or p_value > delta)
        results.append((risk, p_value))
    return results


def fixed_sequence_test(
    test_half: ExitTable, path: list[np.ndarray], risk: float, metric: str, delta: float
) -> list[tuple[float, float | None]]:
    """(test-half risk, p-value) per path point. Testing stops at the first hypothesis it
    cannot reject; later points get no p-value (their risk is still reported, for the plot).

    The first point sends everyone to the final exit: its accuracy drop is zero by
    definition, not by measurement, so it is certain (p-value 0) whatever the sample."""
    results, stopped = [], False
    for thresholds in path:
        lost = losses(test_half, thresholds, metric)
        if stopped:
            p_value = None
        elif metric == DROP and np.isinf(thresholds).all():
            p_value = 0.0
        else:
            p_value = binomial_cdf(int(lost.sum()), len(lost), risk)
        stopped = stopped or p_value is None or p_value > delta
        results.append((float(lost.mean()), p_value))
    return results
