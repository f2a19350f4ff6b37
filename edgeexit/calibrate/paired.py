"""An exact test that an accuracy drop is within budget, from paired right/wrong outcomes.

Leaving early changes a sample's outcome in one of three ways: the early exit is wrong
where the final exit was right (a *loss*, +1), right where the final exit was wrong (a
*gain*, -1), or the same (0). The accuracy drop is the mean of that signed gap, so exits
that fix the final exit's mistakes count in their favour ("Fast yet Safe", Jazbec et al.
2024, control this performance gap). With ``n`` samples, ``A`` losses and ``B`` gains, the
test refuses H0 "drop >= budget" for the pair (p+, p-) of loss and gain rates.

The test is an exact unconditional test for paired proportions (Berger & Sidik 2003;
Tango's 1998 score statistic): it rejects where Tango's statistic ``Z(A, B)`` reaches a
critical value, made exact by computing the region's probability under every null
distribution. Three facts make that computation small and rigorous:

- the region is closed under "one loss fewer" and "one gain more" (it is enlarged to be), so
  the worst null lies on the boundary p+ = p- + budget, one nuisance parameter q = p-;
- on the total D = A + B the region is "A <= a(D)" with a(D) rising by 0 or 1, so its
  probability at q is one pass over D with binomial tails updated step by step;
- between grid points of q, the probability cannot rise faster than the Fisher information
  allows (|d sqrt(P)/dq| <= sqrt(I_n(q)) / 2), so a grid refined until that bound stays
  below the level proves the supremum is below it, not just the grid's maximum.

The critical value is the smallest (in steps of ``Z_STEP``) whose region is proven to have
size <= delta. It depends only on (n, budget, delta) and is cached. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Z_STEP = 0.005  # resolution of the critical value
_BISECT_STEPS = 16  # of the grid search for the critical value, over [0, 8]
_REFINE_ROUNDS = 30  # grid halvings allowed to prove the supremum
P_VALUE_GRID = 600  # nuisance values a reported p-value takes the largest over


@dataclass(frozen=True)
class DropTest:
    """The rejection region for ``samples`` paired outcomes, a drop ``budget`` (a fraction)
    and level ``delta``: an early exit is certified when ``losses <= max_losses[losses +
    gains]``."""

    samples: int
    budget: float
    delta: float
    critical_z: float
    max_losses: np.ndarray  # [samples + 1]: the most losses rejected at each total; -1: none
    size: float  # proven upper bound on the probability of a false certification

    def certifies(self, losses: int, gains: int) -> bool:
        return bool(losses <= self.max_losses[losses + gains])

    def certifies_many(self, losses: np.ndarray, gains: np.ndarray) -> np.ndarray:
        return losses <= self.max_losses[losses + gains]

    def p_value(self, losses: int, gains: int) -> float:
        """The outcome's exact unconditional p-value: the largest probability, over a grid
        of ``P_VALUE_GRID`` null distributions, of the smallest region that holds it (the
        practice of exact unconditional tests; the certification itself rests on the
        proven bound, and a certified outcome's p-value is at most ``delta``)."""
        z = self._strongest_z(losses, gains)
        bounds = region(self.samples, self.budget, z)
        grid = _nuisance_grid(self.budget, P_VALUE_GRID)
        return min(1.0, float(region_size(self.samples, self.budget, bounds, grid).max()))

    def _strongest_z(self, losses: int, gains: int) -> float:
        lo, hi = -8.0, 8.0  # regions shrink as z grows: find the largest z holding the point
        total = losses + gains
        for _ in range(20):
            mid = (lo + hi) / 2
            if losses <= region(self.samples, self.budget, mid)[total]:
                lo = mid
            else:
                hi = mid
        return lo


@lru_cache(maxsize=32)
def drop_test(samples: int, budget: float, delta: float) -> DropTest:
    """The exact test for ``samples`` outcomes (computed once per arguments: ~0.2 s at 450
    samples, a few seconds at several thousand)."""
    grid = _nuisance_grid(budget)
    lo, hi = 0.0, 8.0  # a first critical value from the grid alone
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if region_size(samples, budget, region(samples, budget, mid), grid).max() <= delta:
            hi = mid
        else:
            lo = mid
    z = hi
    while True:  # then the smallest step above it that is proven, not just gridded
        bounds = region(samples, budget, z)
        size = proven_size(samples, budget, bounds, level=delta)
        if size <= delta:
            return DropTest(samples, budget, delta, z, bounds, size)
        z += Z_STEP


def tango_z(losses, gains, n: int, budget: float) -> np.ndarray:
    """Tango's score statistic for H0 "drop >= budget": large when the drop is surely
    smaller. Its variance uses the gain rate fitted under H0 (a closed-form root)."""
    a = np.asarray(losses, dtype=np.float64)
    b = np.asarray(gains, dtype=np.float64)
    rest = n - a - b
    linear = a * (1 - budget) + b * (1 - 3 * budget) - 2 * rest * budget
    q = (linear + np.sqrt(linear * linear + 8 * n * b * budget * (1 - budget))) / (4 * n)
    variance = 2 * q + budget - budget * budget
    return (budget - (a - b) / n) / np.sqrt(variance / n)


def region(n: int, budget: float, z: float) -> np.ndarray:
    """The most losses rejected at each total D = losses + gains (-1: none), for the region
    where Tango's statistic is >= z, enlarged to be closed under one loss fewer and one gain
    more: rising with D by 0 or 1."""
    totals = np.arange(n + 1)
    # The largest A in [0, D] with Z >= z, by bisection (Z falls as A rises along a total;
    # where it does not quite, the closure below still makes the region what is tested).
    top_ok = tango_z(totals, 0, n, budget) >= z
    lo, hi = np.full(n + 1, -1), totals - 1
    for _ in range(int(math.log2(n + 2)) + 2):
        mid = (lo + hi + 1) // 2
        at = np.clip(mid, 0, None)
        ok = (mid >= 0) & (tango_z(at, totals - at, n, budget) >= z)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid - 1)
    base = np.where(top_ok, totals, lo)
    # Closure: (A, B) in the region => (A - 1, B) and (A, B + 1) too.
    before = np.maximum.accumulate(base)
    after = np.maximum.accumulate((base - totals)[::-1])[::-1]
    later = np.append(after[1:], -(n + 2)) + totals
    return np.maximum(before, later).clip(-1, None)


def region_size(n: int, budget: float, max_losses: np.ndarray, q: np.ndarray) -> np.ndarray:
    """P(certified) for each gain rate q on the null boundary (losses at q + budget).

    D ~ Binomial(n, 2q + budget) and, given D, A ~ Binomial(D, (q + budget) / D's rate);
    F(D) = P(A <= max_losses[D] | D) is carried from D to D + 1 (the bound moves by 0 or 1).
    """
    q = np.asarray(q, dtype=np.float64)
    log_fact = _log_factorials(n)
    rate = 2 * q + budget
    share = (q + budget) / rate
    with np.errstate(divide="ignore"):
        log_rate, log_rest = np.log(rate), np.log1p(-rate)
        log_share, log_other = np.log(share), np.log1p(-share)

    def term(count: int, logs: np.ndarray) -> np.ndarray | float:
        return 0.0 if count == 0 else count * logs  # 0 x log 0 = 0

    def pmf(k: int, m: int) -> np.ndarray:
        choose = log_fact[m] - log_fact[k] - log_fact[m - k]
        return np.exp(choose + term(k, log_share) + term(m - k, log_other))

    total = np.zeros_like(q)
    cdf = np.ones_like(q) if max_losses[0] >= 0 else np.zeros_like(q)
    for d in range(n + 1):
        choose = log_fact[n] - log_fact[d] - log_fact[n - d]
        total += np.exp(choose + term(d, log_rate) + term(n - d, log_rest)) * cdf
        if d == n:
            break
        k, k_next = max_losses[d], max_losses[d + 1]
        if k >= 0:  # P(A <= k | d + 1) = P(A <= k | d) - share * P(A = k | d)
            cdf = cdf - share * pmf(k, d)
        if k_next > k:
            cdf = cdf + pmf(k_next, d + 1)
        cdf = np.clip(cdf, 0.0, 1.0)
    return total


def proven_size(n: int, budget: float, max_losses: np.ndarray, *, level: float) -> float:
    """An upper bound on the region's probability under every null distribution, proven to
    be at most ``level``; inf where it cannot be (a grid point above it, or the refinement
    out of rounds). The grid is refined where the Fisher-information bound between two
    points could exceed ``level``, until none can."""
    grid = _nuisance_grid(budget)
    size = region_size(n, budget, max_losses, grid)
    for _ in range(_REFINE_ROUNDS):
        if size.max() > level:
            return math.inf
        left, right = grid[:-1], grid[1:]
        # sqrt(P) moves at most sqrt(I_n(q)) / 2 per unit q; integrated over [left, right]
        # from each end, the lines meet at most this high.
        reach = math.sqrt(n) * (_fisher_integral(right, budget) - _fisher_integral(left, budget))
        bound = ((np.sqrt(size[:-1]) + np.sqrt(size[1:]) + reach / 2) / 2) ** 2
        loose = bound > level
        if not loose.any():
            return float(bound.max())
        middle = (left[loose] + right[loose]) / 2
        grid = np.concatenate([grid, middle])
        size = np.concatenate([size, region_size(n, budget, max_losses, middle)])
        order = np.argsort(grid)
        grid, size = grid[order], size[order]
    return math.inf


def _fisher_integral(q: np.ndarray, budget: float) -> np.ndarray:
    """A primitive of sqrt(1/(q + b) + 1/q + 4/(1 - 2q - b)) bounded termwise (sqrt of a sum
    <= sum of sqrts): the per-sample Fisher information of q on the null boundary."""
    rest = np.clip(1 - 2 * q - budget, 0.0, None)
    return 2 * np.sqrt(q + budget) + 2 * np.sqrt(q) - 2 * np.sqrt(rest)


def _nuisance_grid(budget: float, points: int = 300) -> np.ndarray:
    top = (1 - budget) / 2  # q + (q + budget) <= 1
    near_zero = np.geomspace(1e-9, top, points // 2)
    return np.unique(np.concatenate([[0.0, top], near_zero, np.linspace(0, top, points // 2)]))


@lru_cache(maxsize=8)
def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
