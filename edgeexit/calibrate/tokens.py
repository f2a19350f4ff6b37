"""Calibrating per-token exits: one shared threshold, chosen by running the bundle.

A token's score at exit i depends on which tokens left before it (finished tokens are
dropped, so the ones that remain see less context), so the scores of one full-length pass
cannot predict what a threshold does, as they do for per-sample exits. Each candidate is
therefore *run*: on one half of the data (seeded) the bundle runs with each candidate
shared threshold, and the fastest whose per-token agreement with the full model (every
token to the last exit) keeps within the budget wins; the other half, which the search
never saw, checks it: met or missed, with its margin, and the measured speed-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from edgeexit.budget import Budget
from edgeexit.bundle import threshold_json, thresholds_json
from edgeexit.data import Dataset
from edgeexit.errors import CalibrationError
from edgeexit.measure.rounds import alternating_calls

# Shared thresholds tried: scores are probabilities (confidence, margin, entropy) or gates
CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)


@dataclass(frozen=True)
class TokenPoint:
    """One shared threshold, run over a split."""

    threshold: float
    agreement: float  # share of tokens predicted as the full model predicts them
    early_share: float  # share of tokens that left before the last exit
    ms_per_sample: float  # measured, one sample per call
    full_ms_per_sample: float  # the same samples with no early exit, measured alongside

    @property
    def speedup(self) -> float:
        return self.full_ms_per_sample / self.ms_per_sample

    def to_json(self) -> dict[str, Any]:
        return {"threshold": threshold_json(self.threshold),
                "agreement": self.agreement, "early_share": self.early_share,
                "ms_per_sample": self.ms_per_sample, "speedup": self.speedup}  # fmt: skip


@dataclass(frozen=True)
class TokenReport:
    """The chosen shared threshold, every candidate on the search half, and the check."""

    budget: Budget
    thresholds: tuple[float, ...]
    sweep: tuple[TokenPoint, ...]  # search half
    held_out: TokenPoint
    depth_cap: str | None = None

    @property
    def held_out_met(self) -> bool:
        return self.held_out.agreement >= 1 - self.budget.max_accuracy_drop

    def to_json(self) -> dict[str, Any]:
        floor = 1 - self.budget.max_accuracy_drop
        return {
            "kind": "tokens",
            "budget": self.budget.to_json(),
            "thresholds": thresholds_json(self.thresholds),
            "sweep": [p.to_json() for p in self.sweep],
            "held_out": {
                **self.held_out.to_json(),
                "met": self.held_out_met,
                "margin": self.held_out.agreement - floor,
            },  # fmt: skip
            "depth_cap": self.depth_cap,
        }

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        floor = 1 - self.budget.max_accuracy_drop
        table = Table(title=f"per-token exits: shared threshold, agreement >= {floor:.1%} "
                            "with the full model (search half, measured)")  # fmt: skip
        for col in ("threshold", "token agreement", "tokens leaving early", "speed-up"):
            table.add_column(col, justify="right")
        for p in self.sweep:
            chosen = " *" if p.threshold == self.held_out.threshold else ""
            table.add_row(f"{p.threshold:g}{chosen}", f"{p.agreement:.2%}",
                          f"{p.early_share:.1%}", f"{p.speedup:.2f}x")  # fmt: skip
        yield table
        h = self.held_out
        verdict = "[green]met[/green]" if self.held_out_met else "[red]MISSED[/red]"
        yield (
            f"held-out     threshold {h.threshold:g}: agreement {h.agreement:.2%} ({verdict}, "
            f"margin {h.agreement - floor:+.2%}), {h.early_share:.1%} of tokens leave early, "
            f"{h.speedup:.2f}x measured against no early exit (one sample per call)"
        )


def calibrate_tokens(runtime, dataset: Dataset, budget: Budget, *, seed: int = 0) -> TokenReport:
    """The fastest shared threshold keeping the per-token agreement with the full model
    within ``budget.max_accuracy_drop`` on one half, checked on the other half."""
    if budget.max_accuracy_drop is None or any(
        c is not None
        for c in (
            budget.latency_ms,
            budget.p95_latency_ms,
            budget.energy_mj,
            budget.risk,
            budget.max_quality_drop,
        )  # fmt: skip
    ):
        raise CalibrationError(
            "per-token exits take `max_accuracy_drop` alone: the share of tokens whose "
            "prediction may differ from the full model's (e.g. 0.01)"
        )
    n = len(dataset)
    if n < 4:
        raise CalibrationError(f"calibration data holds {n} samples; expected at least 4")
    order = np.random.default_rng(seed).permutation(n)
    search_rows, held_rows = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    search, held = dataset.take(search_rows), dataset.take(held_rows)
    sweep = tuple(run_point(runtime, search, t) for t in CANDIDATES)
    floor = 1 - budget.max_accuracy_drop
    fits = [p for p in sweep if p.agreement >= floor]
    threshold = min(fits, key=lambda p: p.ms_per_sample).threshold if fits else math.inf
    held_out = run_point(runtime, held, threshold)
    thresholds = (threshold,) * (runtime.num_exits - 1) + (math.inf,)
    return TokenReport(budget, thresholds, sweep, held_out)


def run_point(runtime, data: Dataset, threshold: float) -> TokenPoint:
    """Run every sample with the shared threshold and with none, in a shuffled order
    sample by sample, one sample per call (as a device serves them)."""
    exits = runtime.num_exits
    early = (threshold,) * (exits - 1) + (math.inf,)
    full = (math.inf,) * exits

    ones = [data.take(slice(k, k + 1)).inputs for k in range(len(data))]  # outside the clock
    answers, seconds = alternating_calls(
        {"early": lambda k: runtime.run(ones[k], thresholds=early),
         "full": lambda k: runtime.run(ones[k], thresholds=full)}, len(data),
    )  # fmt: skip
    agree = leave = tokens = 0
    for got, want in zip(answers["early"], answers["full"]):
        agree += int((got.predictions == want.predictions).sum())
        leave += int((got.exit_index < exits - 1).sum())
        tokens += got.exit_index.size
    per_sample = {name: float(s.sum()) * 1e3 / len(data) for name, s in seconds.items()}
    return TokenPoint(threshold, agree / tokens, leave / tokens, per_sample["early"],
                      per_sample["full"])  # fmt: skip
