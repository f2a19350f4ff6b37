"""The pure threshold search: arrays in, thresholds and expected figures out.

Inputs are what every exit says about every calibration sample (score and whether its
prediction is right, an :class:`ExitTable`) and the per-segment costs. The exit rule is the
runtime's: a sample leaves at the first exit i with ``score[i] >= thresholds[i]``; the last
exit always exits. Nothing here runs a model: a candidate is evaluated by indexing arrays.

Two searches:

- the baseline of SDN / DeeBERT: one threshold shared by every exit, swept over a grid;
- per-exit thresholds by coordinate descent over each exit's score quantiles, started from
  the best shared threshold and accepting only improvements, so it is never worse than the
  baseline on the calibration set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeexit.budget import Budget
from edgeexit.bundle import thresholds_json
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.errors import CalibrationError

# One-sided 95 % normal quantile: cost caps are checked on the upper confidence bound of the
# calibration mean, so that a held-out split meets the cap too, not only the calibration set.
_Z95 = 1.645
_EPS = 1e-12


def checked_scores(scores: np.ndarray) -> None:
    """Refuse exit scores [exits, samples] that hold no sample or a NaN (a NaN would
    compare false against every threshold: the sample could never leave early)."""
    if scores.shape[1] == 0:
        raise CalibrationError("calibration data holds no samples")
    if np.isnan(scores).any():
        raise CalibrationError("exit scores contain NaN; check the bundle's score outputs")


@dataclass(frozen=True)
class ExitTable:
    """Per-exit scores and right/wrong flags for N calibration samples and E exits.

    ``correct[i, n]``: exit i's prediction for sample n matches the label (or, unlabeled, the
    final exit's prediction). ``agrees[i, n]``: it matches the final exit's prediction.
    """

    scores: np.ndarray  # [E, N] float, higher = more confident
    correct: np.ndarray  # [E, N] bool
    agrees: np.ndarray  # [E, N] bool
    labeled: bool

    @classmethod
    def from_predictions(
        cls, predictions: np.ndarray, scores: np.ndarray, labels: np.ndarray | None = None
    ) -> ExitTable:
        predictions = np.asarray(predictions)
        scores = np.asarray(scores, dtype=np.float64)
        if predictions.ndim != 2 or predictions.shape != scores.shape:
            raise CalibrationError(
                f"predictions {predictions.shape} and scores {scores.shape} must both be "
                "[exits, samples]"
            )
        checked_scores(scores)
        agrees = predictions == predictions[-1]
        if labels is None:
            return cls(scores, agrees, agrees, labeled=False)
        labels = np.asarray(labels)
        if labels.shape != (predictions.shape[1],):
            raise CalibrationError(
                f"labels have shape {labels.shape}, expected ({predictions.shape[1]},)"
            )
        return cls(scores, predictions == labels[None, :], agrees, labeled=True)

    @property
    def num_exits(self) -> int:
        return self.scores.shape[0]

    @property
    def num_samples(self) -> int:
        return self.scores.shape[1]

    def take(self, index: np.ndarray) -> ExitTable:
        return ExitTable(
            self.scores[:, index], self.correct[:, index], self.agrees[:, index], self.labeled
        )


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold vector and what it is expected to give on the calibration set."""

    thresholds: tuple[float, ...]
    accuracy: float
    mean_latency_ms: float
    p95_latency_ms: float
    energy_mj: float | None  # per sample; None without an energy figure
    exit_shares: tuple[float, ...]
    latency_ucb_ms: float  # upper 95 % bound of the mean latency estimate
    energy_ucb_mj: float | None

    def to_json(self) -> dict:
        return {
            "thresholds": thresholds_json(self.thresholds),
            "accuracy": self.accuracy,
            "mean_latency_ms": self.mean_latency_ms,
            "p95_latency_ms": self.p95_latency_ms,
            "energy_mj": self.energy_mj,
            "exit_shares": list(self.exit_shares),
        }


def exit_indices(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit taken per sample: [K, N] for thresholds [K, E] (or [N] for [E])."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    single = thresholds.ndim == 1
    th = thresholds[None] if single else thresholds
    passes = scores[None, :, :] >= th[:, :, None]
    passes[:, -1, :] = True  # the last exit always exits
    exits = passes.argmax(axis=1)
    return exits[0] if single else exits


def evaluate(table: ExitTable, costs: ExitCosts, thresholds: np.ndarray) -> OperatingPoint:
    """Expected figures for one threshold vector."""
    return evaluate_many(table, costs, np.asarray(thresholds, dtype=np.float64)[None])[0]


def evaluate_many(
    table: ExitTable, costs: ExitCosts, thresholds: np.ndarray
) -> list[OperatingPoint]:
    """Expected figures for K threshold vectors [K, E], in one vectorised pass."""
    if thresholds.shape[1] != table.num_exits or costs.num_exits != table.num_exits:
        raise CalibrationError(
            f"{table.num_exits} exits in the data, {costs.num_exits} exit costs, "
            f"{thresholds.shape[1]} thresholds: they must match"
        )
    exits = exit_indices(table.scores, thresholds)  # [K, N]
    n = table.num_samples
    accuracy = table.correct[exits, np.arange(n)[None, :]].mean(axis=1)
    # what leaving at each exit costs under each vector (disabled exits' heads skipped)
    lat = np.take_along_axis(costs.per_exit_latency(thresholds), exits, axis=1)
    p95_table = costs.per_exit_latency(thresholds, p95=True)
    p95 = np.quantile(np.take_along_axis(p95_table, exits, axis=1), 0.95, axis=1)
    lat_mean = lat.mean(axis=1)
    lat_ucb = lat_mean + _Z95 * lat.std(axis=1) / math.sqrt(n)
    energy_table = costs.per_exit_energy(thresholds)  # disabled heads' energy credited
    if energy_table is None:
        e_mean = e_ucb = [None] * len(thresholds)
    else:
        energy = np.take_along_axis(energy_table, exits, axis=1)
        e_mean = energy.mean(axis=1)
        e_ucb = (e_mean + _Z95 * energy.std(axis=1) / math.sqrt(n)).tolist()
        e_mean = e_mean.tolist()
    shares = np.stack([(exits == i).mean(axis=1) for i in range(table.num_exits)], axis=1)
    points = []
    for k in range(len(thresholds)):
        points.append(
            OperatingPoint(
                thresholds=tuple(float(t) for t in thresholds[k]),
                accuracy=float(accuracy[k]),
                mean_latency_ms=float(lat_mean[k]),
                p95_latency_ms=float(p95[k]),
                energy_mj=e_mean[k],
                exit_shares=tuple(float(s) for s in shares[k]),
                latency_ucb_ms=float(lat_ucb[k]),
                energy_ucb_mj=e_ucb[k],
            )
        )
    return points


@dataclass(frozen=True)
class Objective:
    """A budget turned into a ranking of operating points (higher key = better)."""

    budget: Budget
    accuracy_floor: float | None

    @classmethod
    def for_budget(cls, budget: Budget, table: ExitTable) -> Objective:
        final_accuracy = float(table.correct[-1].mean())
        floor = None
        if budget.max_accuracy_drop is not None:
            floor = final_accuracy - budget.max_accuracy_drop
        if budget.max_quality_drop is not None:  # ``correct`` holds each sample's quality
            floor = final_accuracy - budget.max_quality_drop
        return cls(budget, floor)

    def violation(self, p: OperatingPoint) -> float:
        """Sum of relative excesses over each constraint; 0 when feasible."""
        b, excess = self.budget, 0.0
        for cap, figure in (
            (b.latency_ms, p.latency_ucb_ms),
            (b.p95_latency_ms, p.p95_latency_ms),
            (b.energy_mj, p.energy_ucb_mj),
        ):
            if cap is not None and figure is not None:
                excess += max(0.0, figure - cap - _EPS) / cap
        if self.accuracy_floor is not None:
            excess += max(0.0, self.accuracy_floor - _EPS - p.accuracy)
        return excess

    def feasible(self, p: OperatingPoint) -> bool:
        return self.violation(p) == 0.0

    def key(self, p: OperatingPoint) -> tuple:
        # Infeasible points rank by how far they miss, so the descent walks towards the
        # budget. Feasible ones: with an accuracy floor the goal is speed, else accuracy.
        violation = self.violation(p)
        if violation > 0:
            return (False, -violation, 0.0, 0.0)
        if self.accuracy_floor is not None:
            return (True, 0.0, -round(p.mean_latency_ms, 9), p.accuracy)
        return (True, 0.0, p.accuracy, -round(p.mean_latency_ms, 9))


# Scores are float32 in every bundle edgeexit exports; the runtime rounds thresholds to the
# score's dtype before comparing (bundle.round_threshold), so candidates are float32 values
# too, and the expected figures below are exactly what the runtime will do.
SCORE_DTYPE = np.float32


def candidate_thresholds(scores: np.ndarray, grid_size: int) -> np.ndarray:
    """Score quantiles (so every candidate moves some samples) plus +inf (nobody exits),
    as values of the score dtype. No scores (a chain capped at its first exit, whose one
    exit takes everyone): +inf alone."""
    if scores.size == 0:
        return np.array([np.inf])
    levels = np.linspace(0.0, 1.0, grid_size)
    quantiles = np.quantile(scores.ravel(), levels).astype(SCORE_DTYPE).astype(np.float64)
    return np.append(np.unique(quantiles), np.inf)


def shared_sweep(table: ExitTable, costs: ExitCosts, grid_size: int = 101) -> list[OperatingPoint]:
    """The SDN/DeeBERT baseline: one threshold for every exit, swept over a grid."""
    grid = candidate_thresholds(table.scores[:-1], grid_size)
    thresholds = np.repeat(grid[:, None], table.num_exits, axis=1)
    return evaluate_many(table, costs, thresholds)


def best(points: list[OperatingPoint], objective: Objective) -> OperatingPoint:
    return max(points, key=objective.key)


def coordinate_descent(
    table: ExitTable,
    costs: ExitCosts,
    objective: Objective,
    start: OperatingPoint,
    *,
    grid_size: int = 64,
    max_sweeps: int = 8,
) -> OperatingPoint:
    """Improve ``start`` one exit at a time over that exit's score quantiles.

    Only strict improvements are taken, so the result is never worse than ``start``.
    """
    candidates = [candidate_thresholds(table.scores[i], grid_size) for i in range(table.num_exits)]
    current = start
    for _ in range(max_sweeps):
        improved = False
        for i in range(table.num_exits - 1):  # the last exit's threshold does not matter
            trial = np.tile(np.asarray(current.thresholds), (len(candidates[i]), 1))
            trial[:, i] = candidates[i]
            challenger = best(evaluate_many(table, costs, trial), objective)
            if objective.key(challenger) > objective.key(current):
                current, improved = challenger, True
        if not improved:
            break
    return current


@dataclass(frozen=True)
class SearchResult:
    """The chosen per-exit point, the shared baseline, and both Pareto fronts."""

    per_exit: OperatingPoint
    shared: OperatingPoint
    front: tuple[OperatingPoint, ...]  # per-exit search, accuracy vs expected latency
    shared_front: tuple[OperatingPoint, ...]
    final_accuracy: float


def check_reachable(budget: Budget, costs: ExitCosts) -> None:
    """Refuse a cost cap below the first exit's cost, naming the smallest achievable figure."""
    first_lat = costs.latency_ms[0]
    if budget.latency_ms is not None and budget.latency_ms < first_lat:
        raise CalibrationError(
            f"target latency {budget.latency_ms:g} ms is below the first exit's cost; "
            f"the smallest achievable mean latency is {first_lat:.4g} ms"
        )
    if budget.p95_latency_ms is not None and budget.p95_latency_ms < costs.p95_latency_ms[0]:
        raise CalibrationError(
            f"target p95 latency {budget.p95_latency_ms:g} ms is below the first exit's cost; "
            f"the smallest achievable p95 latency is {costs.p95_latency_ms[0]:.4g} ms"
        )
    if budget.energy_mj is not None:
        if costs.energy_mj is None:
            raise CalibrationError(
                "`energy_mj` needs an energy figure: the profile has no measured energy "
                "and the target has no power model (active_power_w)"
            )
        if budget.energy_mj < costs.energy_mj[0]:
            raise CalibrationError(
                f"target energy {budget.energy_mj:g} mJ is below the first exit's cost; "
                f"the smallest achievable energy is {costs.energy_mj[0]:.4g} mJ/sample "
                f"({costs.energy_origin})"
            )


def search(
    table: ExitTable, costs: ExitCosts, budget: Budget, *, front_points: int = 16
) -> SearchResult:
    """Best shared threshold and best per-exit thresholds for ``budget``.

    Raises CalibrationError when no threshold vector meets the budget.
    """
    check_reachable(budget, costs)
    objective = Objective.for_budget(budget, table)
    sweep = shared_sweep(table, costs)
    shared = best(sweep, objective)
    per_exit = coordinate_descent(table, costs, objective, shared)
    if not objective.feasible(per_exit):
        raise CalibrationError(_infeasible_message(budget, per_exit))
    return SearchResult(
        per_exit=per_exit,
        shared=shared,
        front=tuple(pareto_front(_front_points(table, costs, front_points))),
        shared_front=tuple(pareto_front(sweep)),
        final_accuracy=float(table.correct[-1].mean()),
    )


def _front_points(table: ExitTable, costs: ExitCosts, count: int) -> list[OperatingPoint]:
    """Per-exit points for latency caps spread from the first exit's cost to the full cost."""
    cum = costs.latency_ms
    points = []
    for cap in np.linspace(cum[0], cum[-1], count):
        objective = Objective(Budget(latency_ms=float(cap)), None)
        start = best(shared_sweep(table, costs, grid_size=33), objective)
        point = coordinate_descent(table, costs, objective, start, grid_size=32, max_sweeps=3)
        points.append(point)
    return points


def pareto_front(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """Points no other point beats on both accuracy (higher) and mean latency (lower)."""
    front: list[OperatingPoint] = []
    for p in sorted(points, key=lambda p: (p.mean_latency_ms, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy + _EPS:
            front.append(p)
    return front


def _infeasible_message(budget: Budget, closest: OperatingPoint) -> str:
    return (
        f"no thresholds meet the budget ({budget.describe()}); the closest found gives "
        f"accuracy {closest.accuracy:.2%} at {closest.mean_latency_ms:.4g} ms mean, "
        f"{closest.p95_latency_ms:.4g} ms p95: relax one of the constraints"
    )
