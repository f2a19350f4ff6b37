"""How edgeexit times anything on a machine it shares: interleaved rounds, and the few
statistics every figure is made of.

A shared machine slows whole stretches of seconds (up to 2x on a 2-core VM) and preempts
single calls (a 100 ms stall). So whatever is compared is timed in rounds that interleave
the contenders, each round in the other order from the last (``round_order``), and figures
are read from the rounds with statistics that one bad round cannot move:

- ``median_spread``: how far to trust a median (distribution-free 95 % interval);
- ``uncontended``: the 20th percentile over rounds, what the machine does when other
  processes leave it alone (the same from run to run within ~2 %); calibrate plans with it
  and bench checks calibrate's prediction against the same statistic;
- ``Schedule``: when to stop adding rounds (enough time spanned, figures settled).

Profiling (``profiling``), bench (``bench``) and the benchmarks all time through these.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TypeVar

import numpy as np

T = TypeVar("T")

UNCONTENDED_PERCENTILE = 20


def round_order(items: Sequence[T], r: int) -> Sequence[T]:
    """Round ``r``'s order: as given in even rounds, reversed in odd ones. Over a pair of
    rounds every item runs early and late alike, so drift hits them alike."""
    return items if r % 2 == 0 else items[::-1]


def shuffled_orders(items: Sequence[T], rounds: int, seed: int = 0) -> Iterator[list[T]]:
    """Each of ``rounds`` rounds' order: a new seeded shuffle per round, for contenders
    whose fixed alternation could line up with a machine's periodic load."""
    rng = random.Random(seed)
    order = list(items)
    for _ in range(rounds):
        rng.shuffle(order)
        yield list(order)


def alternating_calls(
    calls: Mapping[str, Callable[[int], T]],
    count: int,
    *,
    rounds: int = 1,
    warmup: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[T]], dict[str, np.ndarray]]:
    """Call every contender on items 0..count-1, item by item, the contenders in a new
    seeded shuffled order for each item (``shuffled_orders``), for ``rounds`` rounds, after
    ``warmup`` untimed items each. Returns each contender's answers (the last round's, per
    item) and its wall-clock seconds per round; ``progress(round, rounds)`` after each."""
    names = list(calls)
    for n in range(min(warmup, count)):  # settle ONNX Runtime before anything is timed
        for name in names:
            calls[name](n)
    answers: dict[str, list] = {name: [None] * count for name in names}
    seconds = {name: np.zeros(rounds) for name in names}
    for r in range(rounds):
        for n, order in enumerate(shuffled_orders(names, count, seed=r)):
            for name in order:
                started = perf_counter()
                answers[name][n] = calls[name](n)
                seconds[name][r] += perf_counter() - started
        if progress is not None:
            progress(r + 1, rounds)
    return answers, seconds


def median_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free interval of the median: the order statistics at ranks
    n/2 -+ z sqrt(n)/2 (binomial normal approximation), clipped to the sample."""
    ranked = np.sort(np.asarray(values, dtype=float))
    n = len(ranked)
    j = max(int(math.floor(n / 2 - z * math.sqrt(n) / 2)), 0)
    return float(ranked[j]), float(ranked[n - 1 - j])


def median_spread(values: Sequence[float]) -> float:
    """Half-width of the 95 % interval of the median of ``values``, relative to the
    median; inf with under 6 values (too few for the interval to exclude the extremes)."""
    n = len(values)
    median = float(np.median(values)) if n else 0.0
    if n < 6 or median <= 0:
        return math.inf
    low, high = median_interval(values)
    return (high - low) / 2 / median


def uncontended(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """The figure a machine gives when left alone: the 20th percentile over rounds."""
    return np.percentile(values, UNCONTENDED_PERCENTILE, axis=axis)


@dataclass(frozen=True)
class Schedule:
    """How many rounds to run: at least ``rounds``, in whole pairs (so that every item ran
    early and late equally often), for at least ``min_seconds`` (so the rounds span the
    stretches a shared machine goes through), then more while the widest ``median_spread``
    is over ``until_spread``, up to ``max_rounds``. Past ``rounds``, nothing starts after
    ``max_seconds``."""

    rounds: int
    max_rounds: int | None = None
    min_seconds: float = 0.0
    max_seconds: float = math.inf
    until_spread: float | None = None

    def done(self, r: int, elapsed_s: float, round_means: Sequence[Sequence[float]]) -> bool:
        """Whether to stop after ``r`` rounds, ``elapsed_s`` in; ``round_means``: per item,
        each round's mean so far."""
        if r < self.rounds:
            return False
        if elapsed_s > self.max_seconds:
            return True
        if r % 2 == 1 or elapsed_s < self.min_seconds:
            return False
        if self.until_spread is None or r >= max(self.rounds, self.max_rounds or self.rounds):
            return True
        return max(median_spread(m) for m in round_means) <= self.until_spread
