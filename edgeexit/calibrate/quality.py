"""Calibrating exits that give tensors (images, vectors) to a quality budget.

An argmax means nothing for an enhanced image, so the search runs on each sample's
*quality* at each exit instead of right/wrong: PSNR in dB against the data's target
tensors (RBQE: stop when the image is good enough), or the negative mean squared error
against the targets, or against the last exit's output when the data has none. The
budget is a drop in the mean: ``--max-quality-drop 0.5dB`` (mean PSNR at most 0.5 dB
below running every sample to the last exit) or ``0.001mse`` (mean squared error at most
0.001 above it).

A certificate on a mean needs each sample's figure bounded, and a PSNR has no floor (an
MSE no ceiling), so no distribution-free bound holds without a range the data cannot
promise. The verdict here is a held-out split instead: the thresholds are searched on one
half of the data (seeded), and the budget is checked on the other half, which the search
never saw: met or missed, with its margin. That is an estimate on new data, not a
guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from edgeexit.budget import Budget
from edgeexit.bundle import thresholds_json
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.search import ExitTable, OperatingPoint, checked_scores, evaluate, search
from edgeexit.errors import CalibrationError
from edgeexit.measure.quality import per_sample_quality

HELD_OUT_SHARE = 0.5


def quality_table(scores: np.ndarray, quality: np.ndarray, labeled: bool) -> ExitTable:
    """The search's table with each sample's quality where a classifier has right/wrong
    (the search maximises, or keeps a floor on, the mean of ``correct``)."""
    scores = np.asarray(scores, dtype=np.float64)
    checked_scores(scores)
    return ExitTable(scores, quality, quality, labeled)


@dataclass(frozen=True)
class HeldOut:
    """The chosen thresholds on the half of the data the search did not see."""

    samples: int
    final_quality: float  # mean quality with every sample at the last exit
    quality: float  # mean quality with the chosen thresholds
    mean_latency_ms: float  # expected, from the exit costs
    exit_shares: tuple[float, ...]
    # expected with every early exit disabled: the plain network, the speed-up's reference
    plain_latency_ms: float

    @property
    def drop(self) -> float:
        return self.final_quality - self.quality


@dataclass(frozen=True)
class QualityReport:
    """What calibrate chose for a bundle whose exits give tensors, and its held-out check."""

    budget: Budget
    costs: ExitCosts
    chosen: OperatingPoint  # on the search half
    final_quality: float  # search half, every sample at the last exit
    held_out: HeldOut
    targets: bool  # quality against the data's targets (else against the last exit)
    search_samples: int
    depth_cap: str | None = None

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self.chosen.thresholds

    @property
    def speedup(self) -> float:
        """Expected, on the held-out half, against the plain network."""
        return self.held_out.plain_latency_ms / self.held_out.mean_latency_ms

    @property
    def metric(self) -> str:
        return self.budget.quality_metric

    def _shown(self, quality: float) -> float:
        """A mean quality as the user reads it: dB, or the mean squared error."""
        return quality if self.metric == "psnr" else -quality

    @property
    def held_out_met(self) -> bool | None:
        """Whether the quality budget held on the held-out half (None: none was set)."""
        limit = self.budget.max_quality_drop
        return None if limit is None else self.held_out.drop <= limit

    def to_json(self) -> dict[str, Any]:
        h = self.held_out
        limit = self.budget.max_quality_drop
        return {
            "kind": "quality",
            "budget": self.budget.to_json(),
            "metric": self.metric,
            "against": "targets" if self.targets else "last exit",
            "thresholds": thresholds_json(self.thresholds),
            "search": {
                "samples": self.search_samples,
                "final_quality": self._shown(self.final_quality),
                "quality": self._shown(self.chosen.accuracy),
                "mean_latency_ms": self.chosen.mean_latency_ms,
                "exit_shares": list(self.chosen.exit_shares),
            },
            "held_out": {
                "samples": h.samples,
                "final_quality": self._shown(h.final_quality),
                "quality": self._shown(h.quality),
                "drop": self._drop(h.final_quality, h.quality),
                "met": self.held_out_met,
                "margin": None if limit is None else limit - h.drop,
                "mean_latency_ms": h.mean_latency_ms,
                "exit_shares": list(h.exit_shares),
            },
            "plain_latency_ms": self.held_out.plain_latency_ms,
            "speedup": self.speedup,
            "costs_from": self.costs.source,
            "depth_cap": self.depth_cap,
        }

    def _drop(self, final: float, chosen: float) -> float:
        """The budget's figure: dB lost, or the MSE gained (both: final minus chosen)."""
        return final - chosen

    def _unit(self) -> str:
        return " dB" if self.metric == "psnr" else ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        name = "PSNR" if self.metric == "psnr" else "MSE"
        against = "the targets 'y'" if self.targets else "the last exit's output"
        table = Table(title=f"calibrated to {self.budget.describe()} ({name} against {against})")
        for col in ("split", "samples", f"{name} all-last", f"{name} chosen", "drop",
                    "expected ms/sample", "exit shares"):  # fmt: skip
            table.add_column(col, justify="right")
        rows = (
            ("search", self.search_samples, self.final_quality, self.chosen.accuracy,
             self.chosen.mean_latency_ms, self.chosen.exit_shares),
            ("held-out", self.held_out.samples, self.held_out.final_quality,
             self.held_out.quality, self.held_out.mean_latency_ms, self.held_out.exit_shares),
        )  # fmt: skip
        for split, n, final, chosen, ms, shares in rows:
            table.add_row(
                split, str(n), f"{self._shown(final):.4g}", f"{self._shown(chosen):.4g}",
                f"{self._drop(final, chosen):.3g}{self._unit()}", f"{ms:.4g}",
                ", ".join(f"{s:.0%}" for s in shares),
            )  # fmt: skip
        yield table
        plain = self.held_out.plain_latency_ms
        shown = [("never" if math.isinf(t) else f"{t:.4g}") for t in self.thresholds[:-1]]
        shown.append("always")  # the last exit takes everyone left
        yield f"thresholds   {', '.join(shown)}"
        yield (
            f"latency      {self.held_out.mean_latency_ms:.4g} ms/sample expected on the "
            f"held-out half against {plain:.4g} ms with every early exit disabled (the "
            f"plain network): {self.speedup:.2f}x; costs {self.costs.source}"
        )
        met = self.held_out_met
        if met is not None:
            margin = self.budget.max_quality_drop - self.held_out.drop
            verdict = "[green]met[/green]" if met else "[red]MISSED[/red]"
            yield (
                f"held-out     budget {verdict} on {self.held_out.samples} samples the search "
                f"did not see: drop {self.held_out.drop:.3g}{self._unit()}, margin "
                f"{margin:+.3g}{self._unit()} (an estimate on new data, not a guarantee)"
            )
        if self.depth_cap:
            yield f"depth cap    {self.depth_cap}"


def calibrate_quality(
    scores: np.ndarray,
    outputs: np.ndarray,
    targets: np.ndarray | None,
    costs: ExitCosts,
    budget: Budget,
    *,
    seed: int = 0,
) -> QualityReport:
    """Search thresholds on one half of the samples (seeded), check them on the other."""
    if budget.max_accuracy_drop is not None or budget.risk is not None:
        raise CalibrationError(
            "this bundle's exits give tensors, not class logits: an accuracy or risk budget "
            "means nothing for them; give `max_quality_drop` (e.g. 0.5dB of PSNR, or "
            "0.001mse) and/or cost caps"
        )
    quality = per_sample_quality(outputs, targets, budget.quality_metric)
    n = quality.shape[1]
    if n < 4:
        raise CalibrationError(
            f"calibration data holds {n} samples; expected at least 4 (half are held out)"
        )
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(n * HELD_OUT_SHARE)))
    search_rows, held_rows = np.sort(order[:cut]), np.sort(order[cut:])
    labeled = targets is not None
    search_table = quality_table(scores[:, search_rows], quality[:, search_rows], labeled)
    held_table = quality_table(scores[:, held_rows], quality[:, held_rows], labeled)
    chosen = search(search_table, costs, budget).per_exit
    on_held = evaluate(held_table, costs, np.asarray(chosen.thresholds))
    plain = evaluate(held_table, costs, np.full(held_table.num_exits, np.inf))
    held = HeldOut(
        samples=len(held_rows),
        final_quality=float(held_table.correct[-1].mean()),
        quality=on_held.accuracy,
        mean_latency_ms=on_held.mean_latency_ms,
        exit_shares=on_held.exit_shares,
        plain_latency_ms=plain.mean_latency_ms,
    )
    return QualityReport(
        budget=budget,
        costs=costs,
        chosen=chosen,
        final_quality=float(search_table.correct[-1].mean()),
        held_out=held,
        targets=labeled,
        search_samples=len(search_rows),
    )
