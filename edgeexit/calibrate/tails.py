"""The tail bounds Learn-then-Test uses, in one place: the exact binomial tail for 0/1
losses (a risk, the share over a p95 cap), as a p-value and as a critical count, and
Clopper-Pearson upper bounds of a proportion (the shares a mean cost is made of). The
paired test of an accuracy drop has its own module (``calibrate.paired``). Pure Python and
numpy."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space so large n does not underflow."""
    if k >= n or p <= 0.0:
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


def binomial_critical(n: int, p: float, level: float) -> int:
    """The largest count k with P(Binomial(n, p) <= k) <= level (-1: none): a count at or
    below it rejects "rate >= p" at ``level``."""
    if p <= 0.0:
        return -1
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    k = np.arange(n + 1)
    log_pmf = log_fact[n] - log_fact[k] - log_fact[n - k] + k * math.log(p)
    if p < 1.0:
        log_pmf = log_pmf + (n - k) * math.log1p(-p)
    cdf = np.cumsum(np.exp(log_pmf - log_pmf.max())) * math.exp(log_pmf.max())
    below = np.flatnonzero(cdf <= level)
    return int(below[-1]) if below.size else -1


@lru_cache(maxsize=16)
def clopper_pearson_upper(n: int, level: float, grid: int = 4000) -> np.ndarray:
    """[n + 1]: for each count k of n, an upper bound u_k on the proportion with
    P(Binomial(n, u_k) <= k) < level: the one-sided Clopper-Pearson bound, rounded up to a
    fine geometric grid (so a little conservative, never less). Read-only."""
    p = np.unique(np.concatenate([np.geomspace(1e-9, 1.0, grid), [1.0]]))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    k = np.arange(n + 1)
    above = np.zeros(n + 1, dtype=int)  # grid points where P(X <= k) >= level
    for chunk in np.array_split(p, max(1, len(p) * (n + 1) // 2_000_000)):
        lp = np.log(chunk)[:, None]
        lq = np.log1p(-np.minimum(chunk, 1 - 1e-16))[:, None]
        log_pmf = log_fact[n] - log_fact[k] - log_fact[n - k] + k * lp + (n - k) * lq
        cdf = np.cumsum(np.exp(log_pmf), axis=1)
        above += (cdf >= level).sum(axis=0)
    bounds = p[np.minimum(above, len(p) - 1)]
    bounds[-1] = 1.0  # every sample counted: nothing to bound
    bounds.setflags(write=False)
    return bounds


def clopper_pearson_upper_one(k: int, n: int, level: float) -> float:
    """The one-sided Clopper-Pearson upper bound of one count, by bisection (exact)."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) >= level:
            lo = mid
        else:
            hi = mid
    return hi
