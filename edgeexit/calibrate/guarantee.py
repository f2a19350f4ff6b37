"""Certified budgets: Learn-then-Test (Angelopoulos et al. 2021) on every calibration sample.

Goal: with probability >= ``confidence`` over the calibration draw, the chosen thresholds
meet the budget on new data from the same distribution (exchangeable samples).

1. **A path fixed in advance.** One threshold shared by every exit, from +inf (every
   sample to the final exit) down through every score value. The order is fixed before any
   label is seen: walking the data's distinct scores is walking an infinitely fine fixed
   grid, whose points between two scores behave like the next score. So the test can use
   every sample; no half is spent on learning the path. (Per-exit thresholds tuned on a
   split kept little more on the models measured: docs/calibrate.md.)
2. **A test per point**, each exact at level delta:
   - accuracy drop: the signed gap per sample (early wrong where final right: +1; early
     right where final wrong: -1), so exits that fix the final exit's mistakes count in
     their favour, tested by an exact unconditional paired test (``calibrate.paired``);
   - ``--risk``: disagreement with the final exit, or the error, 0/1 per sample: the exact
     binomial tail;
   - cost caps (``calibrate.caps``): mean latency and energy by Hoeffding's bound (a cost
     lies between the cheapest and dearest exit's), the p95 cap by the binomial tail of the
     share of samples leaving where the p95 cost is over it.
3. **Fixed-sequence testing.** A risk walks the path from strict to loose and certifies
   every point before the first it cannot; caps walk it from loose to strict. Both at once:
   each walk at delta / 2 (a union bound), and the certified points are those both reach.
4. **The choice.** A risk: the fastest certified point; caps alone: the most accurate.

The per-exit costs are taken as measured; ``edgeexit bench --check`` checks them on the
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from edgeexit.budget import Budget
from edgeexit.calibrate.caps import cap_p_value, caps_certified, describe_caps, has_caps
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.paired import drop_test
from edgeexit.calibrate.path import SharedPath, shared_path
from edgeexit.calibrate.search import ExitTable, OperatingPoint, evaluate, exit_indices
from edgeexit.calibrate.tails import binomial_cdf, binomial_critical
from edgeexit.errors import CalibrationError

DROP = "accuracy drop"  # the metric certified for --max-accuracy-drop
MIN_SAMPLES = 20
PLOTTED_POINTS = 64  # path points kept in the report (the chosen and the refused ones too)


@dataclass(frozen=True)
class PathPoint:
    """One point of the path, for the report and its plot."""

    mean_latency_ms: float  # expected on the calibration set
    risk: float | None  # empirical risk on the calibration set; None: caps only
    p_value: float | None  # computed for the chosen point and the first refused one
    certified: bool
    tested: bool = True  # False: past the first refusal, never tested

    @property
    def verdict(self) -> str:
        if not self.tested:
            return "not tested"
        return "certified" if self.certified else "not certified"

    def to_json(self) -> dict:
        return {
            "mean_latency_ms": self.mean_latency_ms,
            "risk": self.risk,
            "p_value": self.p_value,
            "certified": self.certified,
            "tested": self.tested,
        }


@dataclass(frozen=True)
class Certificate:
    """What Learn-then-Test certified and how.

    ``risk``/``metric``: the risk certified (--risk, or the accuracy drop), None when only
    cost caps were; ``caps``: the cost caps certified, described ('' if none).
    ``empirical_risk`` and ``p_value`` are the chosen point's; ``level`` is what each test
    ran at (delta, or delta / 2 with a risk and caps)."""

    point: OperatingPoint  # expected figures on the calibration set
    risk: float | None
    confidence: float
    metric: str | None
    empirical_risk: float | None
    p_value: float
    level: float
    certified: int  # path points certified
    path_length: int
    samples: int
    path: tuple[PathPoint, ...] = ()  # thinned to about PLOTTED_POINTS
    caps: str = ""
    procedure: str = "fixed-sequence"
    needed: str | None = None  # with no early exit certified: what would allow one

    @property
    def what(self) -> str:
        """What is certified, in words: 'accuracy drop <= 0.01', 'mean latency <= 4 ms'."""
        parts = [] if self.metric is None else [f"{self.metric} <= {self.risk:g}"]
        return ", ".join(parts + ([self.caps] if self.caps else []))

    @property
    def exits_early(self) -> bool:
        return not all(math.isinf(t) for t in self.point.thresholds[:-1])

    def to_json(self) -> dict:
        test = {
            DROP: "exact paired test on the signed gap (Tango's score, unconditional)",
            "disagreement": "exact binomial tail",
            "error": "exact binomial tail",
            None: "",
        }[self.metric]
        caps = "Hoeffding for mean costs, binomial tail for the p95 share" if self.caps else ""
        return {
            "method": f"learn-then-test ({self.procedure} along one shared threshold, every "
            f"sample; {'; '.join(t for t in (test, caps) if t)})",
            "certified_budget": self.what,
            "risk": self.risk,
            "confidence": self.confidence,
            "metric": self.metric,
            "empirical_risk": self.empirical_risk,
            "p_value": self.p_value,
            "level": self.level,
            "certified": self.certified,
            "path_length": self.path_length,
            "samples": self.samples,
            "needed": self.needed,
            "path": [p.to_json() for p in self.path],
        }


def risk_target(budget: Budget) -> tuple[float, str] | None:
    """(target, metric) that ``budget`` asks to certify, or None (cost caps only)."""
    if budget.risk is not None:
        return budget.risk, budget.risk_metric
    if budget.max_accuracy_drop is not None:
        return budget.max_accuracy_drop, DROP
    return None


def no_loss(table: ExitTable, metric: str) -> np.ndarray:
    """[E, N] True where leaving at exit i costs sample n nothing under a 0/1 ``metric``
    (disagreement or error)."""
    return table.agrees if metric == "disagreement" else table.correct


def losses(table: ExitTable, thresholds: np.ndarray, metric: str) -> np.ndarray:
    """Per-sample loss for one threshold vector: 0/1 for a risk; for the accuracy drop the
    signed gap (early wrong minus final wrong), whose mean is the drop."""
    exits = exit_indices(table.scores, thresholds)
    at_exit = np.arange(table.num_samples)
    if metric == DROP:
        return table.correct[-1].astype(int) - table.correct[exits, at_exit].astype(int)
    return ~no_loss(table, metric)[exits, at_exit]


def certify(table: ExitTable, costs: ExitCosts, budget: Budget) -> Certificate:
    """Learn-then-Test thresholds for every part of ``budget`` at ``budget.confidence``
    (module docstring). Raises CalibrationError when not even the full model is certified
    (a cap below its cost, an error rate above the risk)."""
    target, capped = risk_target(budget), has_caps(budget)
    if target is None and not capped:
        raise CalibrationError("nothing to certify: expected a budget")
    if target is not None and target[1] == "error" and not table.labeled:
        raise CalibrationError("`risk_metric` 'error' needs labels 'y' in the data")
    n = table.num_samples
    if n < MIN_SAMPLES:
        raise CalibrationError(
            f"a certified budget needs at least {MIN_SAMPLES} calibration samples, got {n}"
        )
    path = shared_path(table, costs)
    delta = 1.0 - budget.confidence
    level = delta / 2 if target is not None and capped else delta
    risk_ok = _risk_walk(path, target, level) if target is not None else None
    cap_ok = caps_certified(path, costs, budget, level) if capped else None
    walks = [w for w in (risk_ok, cap_ok) if w is not None]
    ok = np.logical_and.reduce(walks)
    if not ok.any():
        raise CalibrationError(_nothing_certified(budget, path, risk_ok, cap_ok))
    if target is not None:  # a risk: the fastest certified point
        chosen = int(np.flatnonzero(ok)[np.argmin(path.mean_latency_ms[ok])])
    else:  # caps only: the most accurate, then the fastest
        candidates = np.flatnonzero(ok)
        chosen = int(max(candidates, key=lambda k: (path.correct[k], -path.mean_latency_ms[k])))
    refused = _first_refused(risk_ok)
    p_values = {k: _p_value(path, k, target, budget, costs) for k in {chosen, refused} if k >= 0}
    point = evaluate(table, costs, path.vector(chosen))
    both = target is not None and capped
    return Certificate(
        point=point,
        risk=None if target is None else target[0],
        confidence=budget.confidence,
        metric=None if target is None else target[1],
        empirical_risk=None if target is None else float(path.risk(target[1])[chosen]),
        p_value=p_values[chosen],
        level=level,
        certified=int(ok.sum()),
        path_length=path.length,
        samples=n,
        path=_thinned(path, target, ok, risk_ok, p_values, chosen, refused),
        caps=describe_caps(budget) if capped else "",
        procedure="two fixed sequences (a risk and caps), each at delta / 2" if both
        else "fixed-sequence",
        needed=None if chosen else _why_no_early_exit(path, target, level, ok),
    )  # fmt: skip


def _risk_walk(path: SharedPath, target: tuple[float, str], level: float) -> np.ndarray:
    """[K] certified by fixed-sequence testing from the strict end: every point before the
    first refusal. The first point (every sample to the final exit) has no disagreement
    and no drop, by definition: certain without a test."""
    risk, metric = target
    n = path.samples
    if metric == DROP:
        passes = (
            drop_test(n, risk, level).certifies_many(path.losses, path.gains)
            if risk > 0
            else np.zeros(path.length, dtype=bool)
        )
    else:
        passes = path.risk_counts(metric) <= binomial_critical(n, risk, level)
    if metric != "error":
        passes[0] = True
    refused = np.flatnonzero(~passes)
    ok = np.ones(path.length, dtype=bool)
    if refused.size:
        ok[refused[0] :] = False
    return ok


def _first_refused(risk_ok: np.ndarray | None) -> int:
    if risk_ok is None or risk_ok.all():
        return -1
    return int(np.argmin(risk_ok))


def _p_value(
    path: SharedPath, k: int, target: tuple[float, str] | None, budget: Budget, costs: ExitCosts
) -> float:
    """The p-value of point k's risk test (0 where it is certain), or of its caps."""
    parts = []
    if target is not None:
        risk, metric = target
        if k == 0 and metric != "error":
            parts.append(0.0)
        elif metric == DROP:
            parts.append(drop_test(path.samples, risk, 1 - budget.confidence).p_value(
                int(path.losses[k]), int(path.gains[k])) if risk > 0 else 1.0)  # fmt: skip
        else:
            parts.append(binomial_cdf(int(path.risk_counts(metric)[k]), path.samples, risk))
    if has_caps(budget):
        parts.append(cap_p_value(path, k, costs, budget))
    return float(max(parts))


def _thinned(path, target, ok, risk_ok, p_values, chosen, refused) -> tuple[PathPoint, ...]:
    """About PLOTTED_POINTS points spread along the path, with the chosen and refused ones."""
    keep = set(np.linspace(0, path.length - 1, min(PLOTTED_POINTS, path.length)).astype(int))
    keep |= {k for k in (chosen, refused) if k >= 0}
    risk = None if target is None else path.risk(target[1])
    tested_until = refused if refused >= 0 else path.length - 1
    points = []
    for k in sorted(keep):
        points.append(
            PathPoint(
                mean_latency_ms=float(path.mean_latency_ms[k]),
                risk=None if risk is None else float(risk[k]),
                p_value=p_values.get(k),
                certified=bool(ok[k]),
                tested=bool(risk_ok is None or k <= tested_until),
            )
        )
    return tuple(points)


def _why_no_early_exit(
    path: SharedPath, target: tuple[float, str] | None, level: float, ok: np.ndarray
) -> str | None:
    """With every sample sent to the final exit: why, in words. Either early exits were
    certified but none is faster than the full model as one graph, or roughly how many
    samples would certify the fastest point whose calibration-set risk is at most half the
    budget, at the rates observed (a normal approximation; the exact test asks a little
    more)."""
    if ok[1:].any():
        share = 1 - path.exit_counts[np.flatnonzero(ok)[-1], -1] / path.samples
        return (
            f"early exits were certified (up to {share:.0%} of samples leaving early), but "
            "none is faster than the full model as deployed with every early exit disabled "
            f"({path.mean_latency_ms[0]:.4g} ms; leaving at the first exit costs "
            f"{path.exit_cost_ms[0]:.4g} ms): the segments before the last cost too little "
            "next to a call's fixed cost for exits to pay. A model whose later segments "
            "carry more of the compute would gain"
        )
    if target is None or target[0] <= 0:
        return None
    risk, metric = target
    n = path.samples
    observed = path.risk(metric)
    within = np.flatnonzero(observed[1:] <= risk / 2) + 1
    if not within.size:
        return (
            f"no early exit keeps the {metric} within half the budget even on the calibration "
            "set: a looser budget is needed, not more data"
        )
    k = int(within[np.argmin(path.mean_latency_ms[within])])
    if metric == DROP:
        variance = (path.losses[k] + path.gains[k]) / n - observed[k] ** 2
    else:
        variance = observed[k] * (1 - observed[k])
    z = NormalDist().inv_cdf(1 - level)
    needed = math.ceil(z * z * max(variance, 1.0 / n) / (risk - observed[k]) ** 2)
    speedup = path.mean_latency_ms[0] / path.mean_latency_ms[k]
    return (
        f"nothing faster than the full model could be certified with {n} calibration "
        f"samples; at the rates observed, about {max(needed, n + 1)} would certify early "
        f"exits giving {speedup:.2f}x (or use a looser budget or a lower `confidence`)"
    )


def _nothing_certified(
    budget: Budget, path: SharedPath, risk_ok: np.ndarray | None, cap_ok: np.ndarray | None
) -> str:
    head = (
        f"no thresholds can be certified for {budget.describe()} at confidence "
        f"{budget.confidence:g} with {path.samples} calibration samples"
    )
    if risk_ok is not None and cap_ok is not None and risk_ok.any() and cap_ok.any():
        fastest = path.mean_latency_ms[risk_ok].min()
        slowest = path.mean_latency_ms[cap_ok].max()
        return (
            f"{head}: the risk is certified only down to {fastest:.4g} ms mean latency and "
            f"the caps only up to {slowest:.4g} ms, so no point meets both. Loosen one of them"
        )
    return (
        f"{head} (not even the full model: the budget is below what it gives). Use a looser "
        "budget or a lower `confidence`"
    )
