"""Cost caps certified on the calibration samples: mean latency, p95 latency, energy.

What a cap depends on, once the per-exit costs are measured, is where samples leave; that
part is tested along the shared path (``calibrate.path``), so that it holds on new data at
the stated confidence. The costs themselves are taken as measured (bench checks them on the
device). A sample's cost lies between the cheapest and the dearest exit's, so the mean is
tested with Hoeffding's inequality; the p95 cap is a share (of samples leaving where the p95
cost exceeds the cap, at most 5 %), tested with the exact binomial tail.
"""

from __future__ import annotations

import numpy as np

from edgeexit.budget import Budget
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.path import SharedPath
from edgeexit.calibrate.tails import binomial_cdf, binomial_critical

P95_SHARE = 0.05  # a p95 cap lets this share of samples pay more


def has_caps(budget: Budget) -> bool:
    return any(c is not None for c in (budget.latency_ms, budget.p95_latency_ms, budget.energy_mj))


def describe_caps(budget: Budget) -> str:
    caps = Budget(latency_ms=budget.latency_ms, p95_latency_ms=budget.p95_latency_ms,
                  energy_mj=budget.energy_mj)  # fmt: skip
    return caps.describe()


def caps_certified(path: SharedPath, costs: ExitCosts, budget: Budget, level: float) -> np.ndarray:
    """[K] certified by fixed-sequence testing from the loose end (every sample at the
    cheapest exit) towards the strict one, up to the first point a cap refuses."""
    passes = np.ones(path.length, dtype=bool)
    for per_exit, cap in _mean_caps(path, costs, budget):
        passes &= _hoeffding(path, per_exit, cap) <= level
    if budget.p95_latency_ms is not None:
        over = _p95_over(path, costs, budget.p95_latency_ms)
        passes &= over <= binomial_critical(path.samples, P95_SHARE, level)
    refused = np.flatnonzero(~passes[::-1])
    ok = np.ones(path.length, dtype=bool)
    if refused.size:
        ok[: path.length - refused[0]] = False
    return ok


def cap_p_value(path: SharedPath, k: int, costs: ExitCosts, budget: Budget) -> float:
    """The largest p-value over the budget's caps at point k: a point is certified only if
    every cap is (H0 "some cap is exceeded" is a union: its p-value is the largest)."""
    p_values = [0.0]
    for per_exit, cap in _mean_caps(path, costs, budget):
        p_values.append(float(_hoeffding(path, per_exit, cap)[k]))
    if budget.p95_latency_ms is not None:
        over = int(_p95_over(path, costs, budget.p95_latency_ms)[k])
        p_values.append(binomial_cdf(over, path.samples, P95_SHARE))
    return max(p_values)


def _per_point(path: SharedPath, table: np.ndarray) -> np.ndarray:
    """[K, E] per-exit figures at each point: point 0 disables every early exit (their
    heads skipped where the bundle can), the others run every head."""
    rest = np.broadcast_to(table[1:], (path.length - 1, table.shape[1]))
    return np.concatenate([table[:1], rest])


def _mean_caps(path: SharedPath, costs: ExitCosts, budget: Budget):
    vectors = np.stack([np.full(path.num_exits, np.inf), np.zeros(path.num_exits)])
    if budget.latency_ms is not None:
        yield _per_point(path, costs.per_exit_latency(vectors)), budget.latency_ms
    energy = costs.per_exit_energy(vectors)
    if budget.energy_mj is not None and energy is not None:
        yield _per_point(path, energy), budget.energy_mj


def _hoeffding(path: SharedPath, per_exit: np.ndarray, cap: float) -> np.ndarray:
    """[K] p-values of H0 "mean cost > cap": exp(-2 n gap^2 / range^2)."""
    mean = (path.exit_counts * per_exit).sum(axis=1) / path.samples
    spread = per_exit.max(axis=1) - per_exit.min(axis=1)
    gap = cap - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.exp(-2 * path.samples * gap**2 / spread**2)
    p = np.where(spread == 0, 0.0, p)
    return np.where(gap <= 0, 1.0, p)


def _p95_over(path: SharedPath, costs: ExitCosts, cap: float) -> np.ndarray:
    """[K] samples leaving where the p95 cost is over ``cap``."""
    vectors = np.stack([np.full(path.num_exits, np.inf), np.zeros(path.num_exits)])
    over = _per_point(path, costs.per_exit_latency(vectors, p95=True)) > cap
    return (path.exit_counts * over).sum(axis=1)
