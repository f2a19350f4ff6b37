"""The two tail bounds Learn-then-Test uses, in one place: the exact binomial tail for 0/1
losses (a risk, an accuracy drop, the share over a p95 cap) and Hoeffding's bound for a
mean of bounded costs (mean latency, energy). Pure Python and numpy."""

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


def hoeffding_p_value(per_exit: np.ndarray, exits: np.ndarray, cap: float) -> float:
    """p-value of H0 "mean cost > cap" for costs ``per_exit[exits]``, bounded by the
    cheapest and dearest exit: exp(-2 n gap^2 / range^2) (Hoeffding)."""
    per_exit = np.asarray(per_exit)
    values = per_exit[exits]
    gap = cap - float(values.mean())
    if gap <= 0:
        return 1.0
    spread = float(per_exit.max() - per_exit.min())
    if spread == 0:
        return 0.0
    return math.exp(-2 * len(values) * gap**2 / spread**2)
