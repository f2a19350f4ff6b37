"""Verdicts: did a calibrated budget hold on held-out data, by how much, and how sure is that.

``bench`` measures a bundle as deployed over new data; this module turns those per-sample
figures into one :class:`Check` per budget the bundle was calibrated to (met or missed,
the margin, a bootstrap confidence interval) and into warnings in words for what a reader
would otherwise miss: a calibrated bundle slower than the full model, or calibrate's
prediction far from what was measured. Pure numpy; the device path imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeexit.budget import Budget
from edgeexit.energy import EnergySource

LEVEL = 0.95  # two-sided level of every interval shown
BOOTSTRAP = 1000  # resamples; a 95 % percentile interval needs several hundred
PREDICTION_TOLERANCE = 0.10  # a prediction further off than this is flagged


@dataclass(frozen=True)
class Check:
    """One budget against its held-out figure; ``low``/``high``: the 95 % interval."""

    name: str  # 'mean latency', 'p95 latency', 'energy', 'accuracy drop', 'disagreement'
    limit: float
    measured: float
    low: float
    high: float
    unit: str  # 'ms', 'mJ/sample', 'pp', '%'
    note: str = ""  # e.g. 'modeled' for energy without a sensor

    @property
    def met(self) -> bool:
        return self.measured <= self.limit

    @property
    def margin(self) -> float:
        """How far below the limit (negative: by how much it was missed)."""
        return self.limit - self.measured

    @property
    def uncertain(self) -> bool:
        """The interval straddles the limit: another held-out draw could flip the verdict."""
        return self.low <= self.limit < self.high

    def describe(self) -> str:
        """'mean latency 0.031 ms (budget 0.04 ms): met, margin 0.009 ms (95% CI 0.029 to
        0.033 ms)'."""
        word = "met" if self.met else "MISSED"
        fmt, unit = _fmt(self.unit), self.unit
        text = (
            f"{self.name} {fmt(self.measured)} {unit} (budget {fmt(self.limit)} {unit}): "
            f"{word}, margin {fmt(self.margin)} {unit} "
            f"({LEVEL:.0%} CI {fmt(self.low)} to {fmt(self.high)} {unit})"
        )
        if self.uncertain:
            text += "; the interval crosses the budget"
        return text + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit": self.limit,
            "measured": self.measured,
            "ci": [self.low, self.high],
            "ci_level": LEVEL,
            "unit": self.unit,
            "met": self.met,
            "margin": self.margin,
            "note": self.note,
        }


def _fmt(unit: str) -> Callable[[float], str]:
    return (lambda v: f"{v:.2f}") if unit in ("pp", "%") else (lambda v: f"{v:.4g}")


@dataclass(frozen=True)
class HeldOut:
    """Per-sample figures of one bench run, early-exit bundle and full chain side by side.

    Latencies: per sample, the median over rounds of the latency of the call it was in.
    ``early_ok``/``full_ok``: right against the labels, or None without labels.
    """

    early_ms: np.ndarray
    full_ms: np.ndarray
    early_predictions: np.ndarray
    full_predictions: np.ndarray
    labels: np.ndarray | None
    energy_mj: np.ndarray | None  # early exit, per sample
    energy: EnergySource  # of energy_mj


def resample(n: int, seed: int = 0) -> np.ndarray:
    """[BOOTSTRAP, n] sample indices, fixed by ``seed`` so a report is reproducible."""
    return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP, n))


def interval(stat: Callable[[np.ndarray], np.ndarray], index: np.ndarray) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (vectorised over rows of ``index``)."""
    tail = (1 - LEVEL) / 2 * 100
    values = np.concatenate([stat(chunk) for chunk in np.array_split(index, 10)])
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def checks(budget: Budget, held: HeldOut, index: np.ndarray) -> tuple[Check, ...]:
    """One check per part of ``budget``, on the held-out figures."""
    found = []
    if budget.latency_ms is not None:
        x = held.early_ms
        found.append(
            Check("mean latency", budget.latency_ms, float(x.mean()),
                  *interval(lambda i: x[i].mean(axis=1), index), "ms")
        )  # fmt: skip
    if budget.p95_latency_ms is not None:
        x = held.early_ms
        found.append(
            Check("p95 latency", budget.p95_latency_ms, float(np.quantile(x, 0.95)),
                  *interval(lambda i: np.quantile(x[i], 0.95, axis=1), index), "ms")
        )  # fmt: skip
    if budget.energy_mj is not None and held.energy_mj is not None:
        e, note = held.energy_mj, _energy_note(held.energy)
        found.append(
            Check("energy", budget.energy_mj, float(e.mean()),
                  *interval(lambda i: e[i].mean(axis=1), index), "mJ/sample", note)
        )  # fmt: skip
    if budget.max_accuracy_drop is not None:
        found.append(_drop_check(budget.max_accuracy_drop, held, index))
    if budget.risk is not None:
        found.append(_risk_check(budget, held, index))
    return tuple(found)


def _drop_check(limit: float, held: HeldOut, index: np.ndarray) -> Check:
    """Accuracy lost against the full chain, paired sample by sample, in points."""
    if held.labels is not None:
        lost = (held.full_predictions == held.labels).astype(float) - (
            held.early_predictions == held.labels
        )
        note = ""
    else:  # without labels, accuracy is agreement with the full chain
        lost = (held.early_predictions != held.full_predictions).astype(float)
        note = "no labels: the drop is disagreement with the full chain"
    return Check(
        "accuracy drop", limit * 100, float(lost.mean() * 100),
        *(100 * v for v in interval(lambda i: lost[i].mean(axis=1), index)), "pp", note,
    )  # fmt: skip


def _risk_check(budget: Budget, held: HeldOut, index: np.ndarray) -> Check:
    if budget.risk_metric == "error" and held.labels is not None:
        loss = (held.early_predictions != held.labels).astype(float)
        name = "error"
    else:
        loss = (held.early_predictions != held.full_predictions).astype(float)
        name = "disagreement"
    note = f"certified at confidence {budget.confidence:g} by calibrate"
    return Check(
        name, budget.risk * 100, float(loss.mean() * 100),
        *(100 * v for v in interval(lambda i: loss[i].mean(axis=1), index)), "%", note,
    )  # fmt: skip


def warnings(
    speedup: float,
    speedup_ci: tuple[float, float],
    measured_ms: float,
    predicted_ms: float | None,
    predicted_batch: int | None,
    batch_size: int,
    *,
    early_exits: bool = True,
) -> tuple[str, ...]:
    """What a reader must not miss, in words. ``early_exits``: whether any threshold
    before the last lets a sample leave (else the bundle is the full model)."""
    said = []
    if not early_exits:
        said.append(
            "the thresholds send every sample to the final exit: no early exit, so exits "
            f"save nothing here. The speed-up shown ({speedup:.2f}x) compares the full model "
            "run as one graph (what this bundle runs now) with the chain of segments and "
            "every exit head (calibrate reports what would allow early exits)"
        )
    elif speedup < 1.0:
        said.append(
            f"the calibrated bundle is SLOWER than the full model ({speedup:.2f}x, "
            f"{LEVEL:.0%} CI {speedup_ci[0]:.2f}-{speedup_ci[1]:.2f}x): its exits cost more "
            "than they save here; recalibrate with this device's costs (edgeexit profile)"
        )
    if predicted_ms is None:
        return tuple(said)
    if predicted_batch is not None and predicted_batch != batch_size:
        said.append(
            f"calibrate predicted {predicted_ms:.4g} ms for batch {predicted_batch}; bench ran "
            f"batch {batch_size}, so the two are not compared "
            f"(bench --batch-size {predicted_batch})"
        )
        return tuple(said)
    error = measured_ms / predicted_ms - 1
    if abs(error) > PREDICTION_TOLERANCE or not math.isfinite(error):
        said.append(
            f"calibrate predicted {predicted_ms:.4g} ms mean, measured "
            f"{measured_ms:.4g} ms ({error:+.0%}, more than {PREDICTION_TOLERANCE:.0%} off): "
            "the costs calibrate used do not describe this run; profile this device and "
            "calibrate again"
        )
    return tuple(said)


def _energy_note(energy: EnergySource) -> str:
    return "modeled from the target's power model" if energy.kind == "modeled" else ""
