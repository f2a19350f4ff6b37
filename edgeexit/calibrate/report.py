"""The calibration report: what calibrate chose, and how it renders itself.

:class:`CalibrationReport` holds the budget, the per-exit choice, the shared-threshold
baseline, the Pareto front and the costs used. It renders as rich tables
(``__rich_console__``), serialises to JSON for ``--json`` and the manifest's ``calibration``
key, and saves the front as a PNG (matplotlib, the optional ``plot`` extra, imported lazily).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from edgeexit import files
from edgeexit.calibrate.budget import Budget
from edgeexit.calibrate.costs import SegmentCosts
from edgeexit.calibrate.guarantee import Certificate
from edgeexit.calibrate.search import OperatingPoint
from edgeexit.errors import CalibrationError


@dataclass(frozen=True)
class CalibrationReport:
    """Everything calibrate decided, with the figures it expects on the device."""

    budget: Budget
    chosen: OperatingPoint  # the thresholds written into the manifest
    shared: OperatingPoint | None  # the SDN/DeeBERT shared-threshold baseline
    front: tuple[OperatingPoint, ...]
    shared_front: tuple[OperatingPoint, ...]
    costs: SegmentCosts
    final_accuracy: float
    labeled: bool
    num_samples: int
    certificate: Certificate | None = None

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self.chosen.thresholds

    @property
    def accuracy_name(self) -> str:
        return "accuracy" if self.labeled else "agreement with final exit"

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``calibration`` key and ``--json`` output."""
        doc: dict[str, Any] = {
            "budget": self.budget.to_json(),
            "accuracy_metric": "labels" if self.labeled else "agreement with final exit",
            "samples": self.num_samples,
            "final_exit_accuracy": self.final_accuracy,
            "expected": self.chosen.to_json(),
            "energy_source": self.costs.energy_source,
            "profile": self.costs.to_json(),
            "front": [p.to_json() for p in self.front],
        }
        if self.shared is not None:
            doc["shared_baseline"] = self.shared.to_json()
        if self.certificate is not None:
            doc["guarantee"] = self.certificate.to_json()
        return doc

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._exit_table()
        yield self._comparison_table()
        yield self._front_table()

    def _exit_table(self) -> Table:
        table = Table(title=f"Per-exit thresholds ({self.budget.describe()})")
        for col in ("exit", "threshold", "share exiting", "cumulative latency ms"):
            table.add_column(col, justify="right")
        cum = self.costs.cumulative_latency_ms
        for i, (t, share) in enumerate(zip(self.chosen.thresholds, self.chosen.exit_shares)):
            last = i == len(cum) - 1
            shown = "always" if last else ("never" if math.isinf(t) else f"{t:.4f}")
            table.add_row(str(i), shown, f"{share:.1%}", f"{cum[i]:.3f}")
        return table

    def _comparison_table(self) -> Table:
        table = Table(title=f"Expected on the calibration set ({self.num_samples} samples)")
        for col in ("setting", self.accuracy_name, "mean ms", "p95 ms", "energy mJ/sample"):
            table.add_column(col, justify="right")
        full = self.costs.cumulative_latency_ms[-1]
        rows = [("final exit only", self.final_accuracy, full, None, None)]
        if self.shared is not None:
            rows.append(_row("shared threshold (baseline)", self.shared))
        label = "guaranteed per-exit" if self.certificate else "per-exit (chosen)"
        rows.append(_row(label, self.chosen))
        for name, acc, mean, p95, energy in rows:
            table.add_row(
                name,
                f"{acc:.2%}",
                f"{mean:.3f}",
                "" if p95 is None else f"{p95:.3f}",
                "" if energy is None else f"{energy:.4f}",
            )
        table.caption = f"energy: {self.costs.energy_source}; costs from {self.costs.source}"
        if self.certificate is not None:
            c = self.certificate
            table.caption += (
                f"; certified {c.metric} <= {c.risk:g} at confidence {c.confidence:g} "
                f"(test-half {c.metric} {c.test_risk:.2%}, p={c.p_value:.2g})"
            )
        return table

    def _front_table(self) -> Table:
        table = Table(title="Pareto front (per-exit search)")
        for col in (self.accuracy_name, "mean latency ms", "speed-up"):
            table.add_column(col, justify="right")
        full = self.costs.cumulative_latency_ms[-1]
        for p in self.front:
            table.add_row(
                f"{p.accuracy:.2%}", f"{p.mean_latency_ms:.3f}", f"{full / p.mean_latency_ms:.2f}x"
            )
        return table

    def save_plot(self, path: str | os.PathLike) -> None:
        """Save accuracy vs expected latency (both fronts and the choice) as a PNG.

        ``path`` must be new or a plot edgeexit wrote (files.check_output)."""
        files.check_output(path, "plot")
        files.write_bytes_atomic(path, self.plot_png(), what="plot")

    def plot_png(self) -> bytes:
        """The Pareto plot as PNG bytes, tagged as edgeexit's (so a later run may replace
        it). Needs matplotlib (the ``plot`` extra)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise CalibrationError("--plot needs matplotlib: pip install 'edgeexit[plot]'") from err
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            for front, style, label in (
                (self.shared_front, "o--", "shared threshold"),
                (self.front, "s-", "per-exit"),
            ):
                if front:
                    ax.plot(
                        [p.mean_latency_ms for p in front],
                        [p.accuracy for p in front],
                        style,
                        label=label,
                        markersize=4,
                    )
            ax.plot(
                [self.chosen.mean_latency_ms],
                [self.chosen.accuracy],
                "r*",
                markersize=14,
                label="chosen",
            )
            ax.set_xlabel("expected mean latency (ms)")
            ax.set_ylabel(self.accuracy_name)
            ax.legend()
            ax.grid(alpha=0.3)
            buffer = io.BytesIO()
            fig.savefig(
                buffer, format="png", dpi=120, bbox_inches="tight",
                metadata={"Software": files.PNG_SOFTWARE},
            )  # fmt: skip
            return buffer.getvalue()
        finally:
            plt.close(fig)


def _row(name: str, p: OperatingPoint) -> tuple:
    return (name, p.accuracy, p.mean_latency_ms, p.p95_latency_ms, p.energy_mj)
