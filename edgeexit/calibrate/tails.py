"""The tail bounds Learn-then-Test uses, in one place: the exact binomial tail for 0/1
losses (a risk, the share over a p95 cap), as a p-value and as a critical count. The paired
test of an accuracy drop has its own module (``calibrate.paired``). Pure Python and numpy."""

from __future__ import annotations

import math

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
