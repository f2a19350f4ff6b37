"""Cost caps certified on the calibration samples: mean latency, p95 latency, energy.

What a cap depends on, once the per-exit costs are measured, is where samples leave; that
part is tested along the shared path (``calibrate.path``), so that it holds on new data at
the stated confidence. The costs themselves are taken as measured (bench checks them on the
device). A sample's cost is one of the exits' costs, so the mean cost is the cheapest
exit's plus, for each dearer exit, the step up to it times the share of samples that reach
at least that far: each share gets an exact (Clopper-Pearson) upper bound at delta / (E - 1)
(a union bound), and the mean is certified where the bound it gives is within the cap.
Where most samples leave early this is far tighter than Hoeffding's bound over the whole
range of costs (which never certified a cap near the first exit's cost at 450 samples),
and about as tight where they spread. The p95 cap is a share (of samples leaving where the
p95 cost exceeds the cap, at most 5 %), tested with the exact binomial tail.
"""

from __future__ import annotations

import numpy as np

from edgeexit.budget import Budget
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.path import SharedPath
from edgeexit.calibrate.tails import (
    binomial_cdf,
    binomial_critical,
    clopper_pearson_upper,
    clopper_pearson_upper_one,
)

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
        passes &= mean_upper_bound(path, per_exit, level) <= cap
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
        p_values.append(_mean_p_value(path, per_exit, cap, k))
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


def mean_upper_bound(path: SharedPath, per_exit: np.ndarray, level: float) -> np.ndarray:
    """[K] an upper bound on each point's mean cost per sample, holding with probability
    >= 1 - level (module docstring). Point 0 sends every sample to the final exit: its mean
    is that exit's cost, certain."""
    order = np.argsort(per_exit[1], kind="stable")  # cheapest first (costs never fall, but
    steps = np.diff(per_exit[1][order])  # a measured energy might): steps up between them
    reached = path.exit_counts[:, order][:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:]
    share = clopper_pearson_upper(path.samples, level / max(len(steps), 1))[reached]
    bound = per_exit[1][order][0] + (share * steps).sum(axis=1)
    bound[0] = per_exit[0][-1]
    return bound


def _mean_p_value(path: SharedPath, per_exit: np.ndarray, cap: float, k: int) -> float:
    """The smallest level at which point k's mean cost is certified within ``cap`` (by
    bisection over the level: the bound rises as the level falls)."""
    if k == 0:
        return 0.0 if per_exit[0][-1] <= cap else 1.0
    order = np.argsort(per_exit[1], kind="stable")
    costs = per_exit[1][order]
    reached = path.exit_counts[k, order][::-1].cumsum()[::-1][1:]

    def bound(level: float) -> float:
        each = level / max(len(reached), 1)
        shares = [clopper_pearson_upper_one(int(r), path.samples, each) for r in reached]
        return costs[0] + float(np.dot(shares, np.diff(costs)))

    if bound(1.0) > cap:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if bound(mid) <= cap else (mid, hi)
    return hi


def _p95_over(path: SharedPath, costs: ExitCosts, cap: float) -> np.ndarray:
    """[K] samples leaving where the p95 cost is over ``cap``."""
    vectors = np.stack([np.full(path.num_exits, np.inf), np.zeros(path.num_exits)])
    over = _per_point(path, costs.per_exit_latency(vectors, p95=True)) > cap
    return (path.exit_counts * over).sum(axis=1)
