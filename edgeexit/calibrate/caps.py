"""Cost caps certified on held-back samples: mean latency, p95 latency and energy per sample.

What a cap depends on, once the per-exit costs are measured, is where samples leave; that
part is tested here on samples the search never saw, so that it holds on new data at the
stated confidence. The costs themselves are taken as measured (bench checks them on the
device). Per-sample cost is bounded by the cheapest and dearest exit, so the mean is tested
with Hoeffding's inequality; the p95 cap is a share (of samples leaving where the p95 cost
exceeds the cap, at most 5 %), tested with the exact binomial tail.
"""

from __future__ import annotations

import numpy as np

from edgeexit.budget import Budget
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.search import (
    ExitTable,
    Objective,
    best,
    coordinate_descent,
    exit_indices,
    shared_sweep,
)
from edgeexit.calibrate.tails import binomial_cdf, hoeffding_p_value

P95_SHARE = 0.05  # a p95 cap lets this share of samples pay more


def has_caps(budget: Budget) -> bool:
    return any(c is not None for c in (budget.latency_ms, budget.p95_latency_ms, budget.energy_mj))


def describe_caps(budget: Budget) -> str:
    caps = Budget(latency_ms=budget.latency_ms, p95_latency_ms=budget.p95_latency_ms,
                  energy_mj=budget.energy_mj)  # fmt: skip
    return caps.describe()


def cap_p_value(table: ExitTable, costs: ExitCosts, thresholds: np.ndarray, budget: Budget):
    """The largest p-value over the budget's caps: a vector is certified only if every cap
    is (H0 is "some cap is exceeded", a union: its p-value is the largest of the parts)."""
    exits = exit_indices(table.scores, thresholds)
    p_values = [0.0]
    if budget.latency_ms is not None:
        p_values.append(hoeffding_p_value(costs.latency_ms, exits, budget.latency_ms))
    if budget.energy_mj is not None and costs.energy_mj is not None:
        p_values.append(hoeffding_p_value(costs.energy_mj, exits, budget.energy_mj))
    if budget.p95_latency_ms is not None:
        over = int((np.asarray(costs.p95_latency_ms)[exits] > budget.p95_latency_ms).sum())
        p_values.append(binomial_cdf(over, len(exits), P95_SHARE))
    return max(p_values)


def cap_path(table: ExitTable, costs: ExitCosts, budget: Budget, length: int):
    """Per-exit thresholds from fast to slow: the most accurate under the caps scaled by a
    rising factor up to 1 (on the path half). Faster than the caps allow is what passes
    the test; the last steps, at the caps, are the ones it may refuse."""
    path: list[np.ndarray] = []
    for factor in np.linspace(0.3, 1.0, length):
        scaled = Budget(
            latency_ms=None if budget.latency_ms is None else factor * budget.latency_ms,
            p95_latency_ms=None
            if budget.p95_latency_ms is None
            else factor * budget.p95_latency_ms,
            energy_mj=None if budget.energy_mj is None else factor * budget.energy_mj,
        )
        objective = Objective(scaled, None)
        start = best(shared_sweep(table, costs, grid_size=33), objective)
        point = coordinate_descent(table, costs, objective, start, grid_size=32, max_sweeps=3)
        if objective.feasible(point) and not any(np.array_equal(point.thresholds, p) for p in path):
            path.append(np.asarray(point.thresholds))
    return path
