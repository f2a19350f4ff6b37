"""The path certified budgets are tested along: one threshold shared by every exit.

Point 0 sends every sample to the final exit (+inf); each later point lowers the shared
threshold to the next score any early exit gave, so one or more samples leave earlier.
A sample leaves at the first exit whose score reaches the threshold, so it moves only when
the threshold passes one of its *records* (a score above every earlier exit's): there it
moves to that exit. The path is one sweep over those events, O(samples x exits), and holds
per point what every test needs: where samples leave, the 0/1 losses, and the accuracy
drop's losses (early wrong where final right) and gains (early right where final wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.search import ExitTable

DROP = "accuracy drop"


@dataclass(frozen=True)
class SharedPath:
    """K points, strict to loose, on N samples and E exits."""

    thresholds: np.ndarray  # [K] the shared threshold, +inf first, then falling
    exit_counts: np.ndarray  # [K, E] samples leaving at each exit
    losses: np.ndarray  # [K] early exit wrong where the final one is right
    gains: np.ndarray  # [K] early exit right where the final one is wrong
    disagreements: np.ndarray  # [K] prediction differs from the final exit's
    errors: np.ndarray  # [K] wrong (against labels; unlabeled: disagreements)
    mean_latency_ms: np.ndarray  # [K] expected, from the exit costs
    exit_cost_ms: np.ndarray  # [E] what leaving at each exit costs, every head run
    samples: int

    @property
    def length(self) -> int:
        return len(self.thresholds)

    @property
    def num_exits(self) -> int:
        return self.exit_counts.shape[1]

    @property
    def correct(self) -> np.ndarray:
        """[K] samples right at the exit they take."""
        return self.samples - self.errors

    def vector(self, k: int) -> np.ndarray:
        """Point k's per-exit thresholds (the last exit's is never read)."""
        return np.full(self.num_exits, self.thresholds[k])

    def risk_counts(self, metric: str) -> np.ndarray:
        return self.disagreements if metric == "disagreement" else self.errors

    def risk(self, metric: str) -> np.ndarray:
        """[K] the empirical risk: the accuracy drop (signed), or a 0/1 risk's rate."""
        if metric == DROP:
            return (self.losses - self.gains) / self.samples
        return self.risk_counts(metric) / self.samples


def shared_path(table: ExitTable, costs: ExitCosts) -> SharedPath:
    """Every shared threshold that moves a sample, strict to loose (module docstring)."""
    # Thresholds are score values: a bundle's scores are float32, so each is exactly what
    # the runtime compares against (it rounds thresholds to the score's dtype).
    scores = table.scores
    n, last = table.num_samples, table.num_exits - 1
    # Each sample's records among the early exits, and the exit it left at before each.
    best = np.full(n, -np.inf)
    moves = []  # (threshold, sample, from exit, to exit) per event, grouped per exit
    for i in range(last):
        record = scores[i] > best
        best = np.maximum(best, scores[i])
        moves.append((scores[i][record], np.flatnonzero(record), i))
    thresholds = np.concatenate([m[0] for m in moves]) if moves else np.empty(0)
    samples = np.concatenate([m[1] for m in moves]) if moves else np.empty(0, dtype=int)
    to_exit = np.concatenate([np.full(len(m[1]), m[2]) for m in moves]) if moves else samples
    # A sample's records rise with the exit index, so as the threshold falls it passes them
    # from the last record down: each move is from the sample's next record (or the final
    # exit) to this one.
    order = np.lexsort((-to_exit, samples))  # per sample, later exits first
    s_sorted, e_sorted = samples[order], to_exit[order]
    from_sorted = np.full(len(order), last)
    same = s_sorted[1:] == s_sorted[:-1]
    from_sorted[1:][same] = e_sorted[:-1][same]
    from_exit = np.empty_like(from_sorted)
    from_exit[order] = from_sorted
    # Sweep: events sorted by threshold, falling; ties land on the same point.
    by_threshold = np.argsort(-thresholds, kind="stable")
    t = thresholds[by_threshold]
    s, a, b = samples[by_threshold], from_exit[by_threshold], to_exit[by_threshold]
    new_value = np.r_[True, t[1:] != t[:-1]] if len(t) else np.empty(0, dtype=bool)
    point = np.cumsum(new_value)  # point 0 is +inf, before any event
    values = np.concatenate([[np.inf], t[new_value]])
    k = len(values)

    def swept(per_sample_exit: np.ndarray) -> np.ndarray:
        """[K] count of a per-(exit, sample) flag over the samples, at each point."""
        start = per_sample_exit[last].sum()
        delta = np.zeros(k)
        np.add.at(delta, point, per_sample_exit[b, s].astype(int) - per_sample_exit[a, s])
        return start + np.cumsum(delta)

    step = np.zeros((k, table.num_exits))
    step[0, last] = n
    np.add.at(step, (point, b), 1)
    np.add.at(step, (point, a), -1)
    counts = np.cumsum(step, axis=0)
    final_right = table.correct[last][None, :]
    return SharedPath(
        thresholds=values,
        exit_counts=counts.astype(int),
        losses=swept(final_right & ~table.correct).astype(int),
        gains=swept(~final_right & table.correct).astype(int),
        disagreements=swept(~table.agrees).astype(int),
        errors=swept(~table.correct).astype(int),
        mean_latency_ms=_mean_latency(counts, costs, n),
        exit_cost_ms=np.asarray(costs.latency_ms, dtype=float),
        samples=n,
    )


def _mean_latency(counts: np.ndarray, costs: ExitCosts, n: int) -> np.ndarray:
    """[K] expected latency per point: at point 0 every early exit is disabled (its head
    skipped where the bundle can), elsewhere every exit runs its head."""
    e = counts.shape[1]
    per_exit = costs.per_exit_latency(np.stack([np.full(e, np.inf), np.zeros(e)]))
    mean = counts @ per_exit[1] / n
    mean[0] = counts[0] @ per_exit[0] / n
    return mean
