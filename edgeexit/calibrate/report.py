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
from edgeexit.budget import Budget
from edgeexit.calibrate.costs import ExitCosts
from edgeexit.calibrate.guarantee import Certificate
from edgeexit.calibrate.search import OperatingPoint
from edgeexit.errors import CalibrationError

NOISY = 0.05  # cost noise above which the report advises profiling an idle device
ROWS_SHOWN = 10  # path points in guarantee mode's table


@dataclass(frozen=True)
class CalibrationReport:
    """Everything calibrate decided, with the figures it expects on the device."""

    budget: Budget
    chosen: OperatingPoint  # the thresholds written into the manifest
    shared: OperatingPoint | None  # the SDN/DeeBERT shared-threshold baseline
    front: tuple[OperatingPoint, ...]
    shared_front: tuple[OperatingPoint, ...]
    costs: ExitCosts
    final_accuracy: float
    labeled: bool
    num_samples: int
    certificate: Certificate | None = None
    # With a certified accuracy drop: what the calibration-set estimate alone would choose.
    estimate: OperatingPoint | None = None
    depth_cap: str | None = None  # why the chain stops before its last exit, in words

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self.chosen.thresholds

    @property
    def kept_exits(self) -> tuple[int, ...]:
        """Exits samples may leave at (a finite threshold, and the last): the others are
        disabled, and on the device their heads do not run (a segment's body does)."""
        last = len(self.thresholds) - 1
        return tuple(i for i, t in enumerate(self.thresholds) if i == last or math.isfinite(t))

    @property
    def off_front(self) -> str | None:
        """Why the certified choice sits inside the fronts, in words (None: it does not)."""
        if self.certificate is None or not self.front:
            return None
        c = self.chosen
        beaten = any(
            p.accuracy >= c.accuracy and p.mean_latency_ms < c.mean_latency_ms * (1 - 1e-9)
            for p in self.front
        )
        if not beaten:
            return None
        return (
            "the fronts are the calibration set's estimate; the certified point is the "
            "fastest that the test accepts along one shared threshold, so it sits inside them"
        )

    @property
    def exits_line(self) -> str:
        """Which exits samples may take, counted as exits, e.g. 'exits kept: 2 of 3 (0 and
        2); disabled: 1 (threshold never: ...)'."""
        kept, total = self.kept_exits, len(self.thresholds)
        disabled = [i for i in range(total) if i not in kept]
        return (
            f"exits kept: {len(kept)} of {total} ({_listed(kept)}); disabled: "
            f"{_listed(disabled)} (threshold never: where the bundle has bodies, their heads "
            "do not run)"
        )

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
            "kept_exits": list(self.kept_exits),
            "energy_source": self.costs.energy.label,
            "profile": self.costs.to_json(),
            "front": [p.to_json() for p in self.front],
        }
        if self.shared is not None:
            doc["shared_baseline"] = self.shared.to_json()
        if self.certificate is not None:
            doc["guarantee"] = self.certificate.to_json()
        if self.estimate is not None:
            doc["uncertified_estimate"] = self.estimate.to_json()
        if self.depth_cap is not None:
            doc["depth_cap"] = self.depth_cap
        if self.off_front is not None:
            doc["note"] = self.off_front
        doc["trust"] = {"guaranteed": self.guaranteed, "estimated": self.estimated,
                        "warnings": list(self.warnings)}  # fmt: skip
        return doc

    @property
    def guaranteed(self) -> str | None:
        """What holds on new data with a stated confidence, in words (None: nothing)."""
        c = self.certificate
        if c is None:
            return None
        parts = []
        if c.metric == "accuracy drop":
            parts.append(f"accuracy drop <= {c.risk * 100:g} pp")
        elif c.metric is not None:
            parts.append(f"{c.metric} <= {c.risk:.2%}")
        if c.caps:
            parts.append(f"{c.caps} (where samples leave; the costs as measured)")
        return (
            f"{', '.join(parts)} on new data from the calibration data's distribution, with "
            f"confidence {c.confidence:g} (Learn-then-Test, {c.procedure} along one shared "
            f"threshold, on all {c.samples} calibration samples)"
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """What a reader must not miss, in words."""
        said = [self.too_noisy] if self.too_noisy else []
        if all(math.isinf(t) for t in self.thresholds[:-1]):
            c = self.certificate
            if c is None:
                reason = f"no early exit meets {self.budget.describe()}"
            else:
                reason = c.needed or (
                    f"nothing faster than the full model could be certified for "
                    f"{self.budget.describe()} with {c.samples} calibration samples; more "
                    "calibration data, a looser budget or a lower `confidence` would allow "
                    "early exits"
                )
            said.append(f"no early exit, every sample goes to the final exit: {reason}")
        return tuple(said)

    @property
    def too_noisy(self) -> str | None:
        """Advice when the costs are too noisy to tell candidates apart, else None."""
        c = self.costs
        if c.noise <= NOISY and not c.clipped:
            return None
        how = []
        if not math.isfinite(c.noise):
            how.append("their noise unknown")
        elif c.noise > NOISY:
            how.append(f"known only within +-{c.noise:.1%}")
        if c.clipped:
            how.append(f"{c.clipped} exit(s) measured cheaper than an earlier one")
        return (
            f"the exit costs were noisy ({'; '.join(how)}): candidates closer than that "
            "cannot be told apart, and another run may choose differently. Run "
            "`edgeexit profile` on an idle device and calibrate with its `profile`"
        )

    @property
    def estimated(self) -> str:
        """What is only an estimate, in words."""
        return (
            "the expected figures (calibration-set exit shares x per-exit costs from "
            f"{self.costs.source}); the per-exit costs are as measured: check them on the "
            "device with `edgeexit bench --check`"
        )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._exit_table()
        yield self._comparison_table()
        if self.front:
            yield self._front_table()
        if self.budget.guarantee:
            yield self._path_table()
        if len(self.kept_exits) < len(self.thresholds):
            yield self.exits_line
        if self.depth_cap:
            yield f"depth cap: {self.depth_cap}"
        if self.off_front:
            yield f"note: {self.off_front}"
        if self.guaranteed:
            yield f"[green]guaranteed:[/green] {self.guaranteed}"
        yield f"[yellow]estimated:[/yellow] {self.estimated}"
        for warning in self.warnings:
            yield f"[yellow]warning:[/yellow] {warning}"

    def _exit_table(self) -> Table:
        table = Table(title=f"Per-exit thresholds ({self.budget.describe()})")
        for col in ("exit", "threshold", "share exiting", "cumulative latency ms"):
            table.add_column(col, justify="right")
        cum = self.costs.latency_ms
        for i, (t, share) in enumerate(zip(self.chosen.thresholds, self.chosen.exit_shares)):
            last = i == len(cum) - 1
            shown = "always" if last else ("never" if math.isinf(t) else f"{t:.4f}")
            table.add_row(str(i), shown, f"{share:.1%}", f"{cum[i]:.3f}")
        return table

    def _comparison_table(self) -> Table:
        table = Table(title=f"Expected on the calibration set ({self.num_samples} samples)")
        columns = ("setting", self.accuracy_name, "mean ms", "p95 ms", "energy mJ/sample",
                   "speed-up")  # fmt: skip
        for col in columns:
            table.add_column(col, justify="right")
        full = self.full_latency_ms
        rows = [("full model (no early exit)", self.final_accuracy, full, None, None)]
        if self.shared is not None:
            rows.append(_row("shared threshold (baseline)", self.shared))
        if self.estimate is not None:
            rows.append(_row("per-exit, estimate only (not certified)", self.estimate))
        label = "per-exit, certified (chosen)" if self.certificate else "per-exit (chosen)"
        rows.append(_row(label, self.chosen))
        for name, acc, mean, p95, energy in rows:
            table.add_row(
                name,
                f"{acc:.2%}",
                f"{mean:.3f}",
                "" if p95 is None else f"{p95:.3f}",
                "" if energy is None else f"{energy:.4f}",
                f"{full / mean:.2f}x",
            )
        table.caption = f"energy: {self.costs.energy_origin}; costs from {self.costs.source}"
        if self.costs.noise > 0:
            table.caption += f", known within +-{self.costs.noise:.1%}"
        if self.costs.clipped:
            table.caption += f", {self.costs.clipped} exit(s) raised to an earlier one's cost"
        if self.certificate is not None:
            c = self.certificate
            table.caption += (
                f"; certified {c.what} at confidence {c.confidence:g} (p={c.p_value:.2g})"
            )
        return table

    def _path_table(self) -> Table:
        """Guarantee mode's path, strict to loose, as fixed-sequence testing saw it (a few
        points along it, and the chosen and refused ones)."""
        c = self.certificate
        table = Table(title=f"Learn-then-Test path ({c.metric} <= {c.risk:g}, "
                      f"confidence {c.confidence:g}, {c.samples} samples)")  # fmt: skip
        for col in ("mean latency ms", f"{c.metric}", "p-value", "verdict"):
            table.add_column(col, justify="right")
        shown = _spread(c.path, ROWS_SHOWN, keep=lambda p: p.p_value is not None)
        for point in shown:
            p_value = "" if point.p_value is None else f"{point.p_value:.2g}"
            chosen = " (chosen)" if point.mean_latency_ms == self.chosen.mean_latency_ms else ""
            table.add_row(f"{point.mean_latency_ms:.3f}", f"{point.risk:.2%}", p_value,
                          point.verdict + chosen)  # fmt: skip
        table.caption = (
            f"{c.certified} of {c.path_length} path points certified, each test at level "
            f"{c.level:.2g}; {len(shown)} shown"
        )
        return table

    def _front_table(self) -> Table:
        table = Table(title="Pareto front (per-exit search)")
        for col in (self.accuracy_name, "mean latency ms", "speed-up"):
            table.add_column(col, justify="right")
        full = self.full_latency_ms
        for p in self.front:
            table.add_row(
                f"{p.accuracy:.2%}", f"{p.mean_latency_ms:.3f}", f"{full / p.mean_latency_ms:.2f}x"
            )
        return table

    def save_plot(self, path: str | os.PathLike) -> None:
        """Save accuracy vs expected latency (both fronts and the choice) as a PNG.

        ``path`` must be new or a plot edgeexit wrote (files.check_output)."""
        out = files.check_output(path, "plot")
        files.write_bytes_atomic(out, self.plot_png(), what="plot")

    def plot_png(self) -> bytes:
        """The plot as PNG bytes, tagged as edgeexit's (so a later run may replace it):
        :func:`draw_front`, or :func:`draw_guarantee` in guarantee mode. Needs matplotlib
        (the ``plot`` extra)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise CalibrationError("`plot` needs matplotlib: pip install 'edgeexit[plot]'") from err
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            (draw_guarantee if self.budget.guarantee else draw_front)(ax, self)
            buffer = io.BytesIO()
            fig.savefig(
                buffer, format="png", dpi=120, bbox_inches="tight",
                metadata={"Software": files.PNG_SOFTWARE},
            )  # fmt: skip
            return buffer.getvalue()
        finally:
            plt.close(fig)

    @property
    def full_latency_ms(self) -> float:
        """Expected latency of the full model as deployed: every early exit disabled (its
        plain graph, one call, where the bundle has one; else the heads skipped)."""
        return self.costs.full_ms

    @property
    def speedup(self) -> float:
        return self.full_latency_ms / self.chosen.mean_latency_ms


def draw_front(ax: Any, report: CalibrationReport) -> None:
    """Accuracy (%) vs expected mean latency on a matplotlib Axes: both fronts, the full
    model, the budget and the choice."""
    for front, style, label in (
        (report.shared_front, "o--", "shared threshold front"),
        (report.front, "s-", "per-exit front"),
    ):
        if front:
            # A front is a staircase: past a point, the best reachable accuracy stays that
            # point's until the next one.
            x = [p.mean_latency_ms for p in front]
            y = [100 * p.accuracy for p in front]
            ax.step(x, y, style, where="post", markersize=4, label=label)
    full_accuracy, full_ms = 100 * report.final_accuracy, report.full_latency_ms
    ax.plot(
        [full_ms],
        [full_accuracy],
        "kD",
        markersize=7,
        label=f"full model (final exit only): {full_accuracy:.1f} %, {full_ms:.3g} ms",
    )
    _draw_budget(ax, report)
    if report.estimate is not None:  # what the guarantee costs, drawn next to the choice
        e = report.estimate
        label = f"estimate only, not certified: {report.full_latency_ms / e.mean_latency_ms:.2f}x"
        ax.plot([e.mean_latency_ms], [100 * e.accuracy], "o", color="0.4", fillstyle="none",
                markersize=9, label=label)  # fmt: skip
    chosen = report.chosen
    certified = "certified, " if report.certificate is not None else ""
    _mark_chosen(
        ax,
        report,
        100 * chosen.accuracy,
        f"chosen ({certified}calibration set): {100 * chosen.accuracy:.1f} %, "
        f"{chosen.mean_latency_ms:.3g} ms, {report.speedup:.2f}x",
        # Slow and inaccurate: a front never goes there; short of the right edge, where
        # the full model's point sits whatever its accuracy.
        corner=(0.88, 0.04),
    )
    if report.off_front:
        _note(ax, report.off_front)
    ax.set_title(f"Calibration for {report.budget.describe()}\n{_speedup_line(report)}")
    ax.set_xlabel("expected mean latency (ms)")
    ax.set_ylabel(f"{report.accuracy_name} (%)")
    _finish(ax)


def _draw_budget(ax: Any, report: CalibrationReport) -> None:
    """The budget as lines where the axes can show it, and a note where they cannot."""
    b = report.budget
    if b.latency_ms is not None:
        label = f"budget: mean latency <= {b.latency_ms:g} ms"
        ax.axvline(b.latency_ms, color="C3", linestyle="--", label=label)
    if b.p95_latency_ms is not None:
        # The x axis is the mean: this line only bounds where the chosen point can lie.
        label = f"budget: p95 cap {b.p95_latency_ms:g} ms (x axis is the mean)"
        ax.axvline(b.p95_latency_ms, color="C4", linestyle=":", label=label)
    if b.max_accuracy_drop is not None:
        floor = 100 * (report.final_accuracy - b.max_accuracy_drop)
        label = f"budget: accuracy drop <= {100 * b.max_accuracy_drop:g} pp"
        ax.axhline(floor, color="C3", linestyle="--", label=label)
    if b.energy_mj is not None:
        energy = report.chosen.energy_mj
        chosen = "" if energy is None else f"; chosen: {energy:.3g} mJ/sample"
        _note(ax, f"energy budget <= {b.energy_mj:g} mJ/sample is not on these axes{chosen}")


# How each point of the Learn-then-Test path is drawn, by what testing said of it.
_VERDICT_STYLE = {
    "certified": {"marker": "o", "color": "C2"},
    "not certified": {"marker": "X", "color": "C3"},
    "not tested": {"marker": "o", "color": "0.5", "fillstyle": "none"},
}


def draw_guarantee(ax: Any, report: CalibrationReport) -> None:
    """Guarantee mode on a matplotlib Axes: the calibration set's risk (%) vs expected mean
    latency along the Learn-then-Test path (certified, failed, not tested), against the
    target."""
    cert = report.certificate
    if cert is None or cert.empirical_risk is None:
        raise CalibrationError("draw_guarantee needs a report made in guarantee mode (`risk`)")
    x = [p.mean_latency_ms for p in cert.path]
    y = [100 * p.risk for p in cert.path]
    ax.plot(x, y, "-", color="0.75", linewidth=1, zorder=1, label="path (strict to loose)")
    delta = f"{cert.level:.2g}"
    suffix = {"certified": f" (p <= {delta})", "not certified": f" (p > {delta}): testing stops"}
    for verdict, style in _VERDICT_STYLE.items():
        picked = [i for i, p in enumerate(cert.path) if p.verdict == verdict]
        if picked:
            label = verdict + suffix.get(verdict, "")
            xs, ys = [x[i] for i in picked], [y[i] for i in picked]
            ax.plot(xs, ys, linestyle="none", markersize=6, label=label, **style)
    target = 100 * cert.risk
    ax.axhline(target, color="C3", linestyle="--", label=f"risk target {target:g} %")
    _mark_chosen(
        ax,
        report,
        100 * cert.empirical_risk,
        f"chosen: {cert.metric} {100 * cert.empirical_risk:.1f} % (p={cert.p_value:.2g}), "
        f"{report.chosen.mean_latency_ms:.3g} ms, {report.speedup:.2f}x",
        corner=(0.97, 0.95),  # risk falls as latency grows: slow and risky stays empty
    )
    ax.set_title(
        f"Learn-then-Test for {cert.metric} <= {target:g} % at confidence "
        f"{cert.confidence:g}\n{_speedup_line(report)}"
    )
    ax.set_xlabel("expected mean latency (ms)")
    ax.set_ylabel(f"{cert.metric} on the calibration set (%)")
    _note(
        ax,
        f"{cert.certified} of {cert.path_length} path points certified, tested on all "
        f"{cert.samples} samples; fixed-sequence testing stops at the first failure",
    )
    _finish(ax)


def _speedup_line(report: CalibrationReport) -> str:
    return f"chosen thresholds: {report.speedup:.2f}x faster than the full model (expected)"


def _mark_chosen(
    ax: Any, report: CalibrationReport, y: float, text: str, corner: tuple[float, float]
) -> None:
    """The chosen point as a star, its figures in a box at ``corner`` (axes fraction), where
    the data does not go, so the box hides nothing."""
    x = report.chosen.mean_latency_ms
    ax.plot([x], [y], "r*", markersize=14, label="chosen", zorder=5)
    ax.annotate(
        text,
        (x, y),
        xytext=corner,
        textcoords="axes fraction",
        ha="left" if corner[0] < 0.5 else "right",
        va="bottom" if corner[1] < 0.5 else "top",
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85},
        arrowprops={"arrowstyle": "->", "color": "0.4", "shrinkB": 8},
    )


def _finish(ax: Any) -> None:
    # The legend goes right of the axes: the one free corner inside holds the chosen box.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(alpha=0.3)


def _note(ax: Any, text: str) -> None:
    """A line of small print under the x label, outside the data; notes stack downwards."""
    line = getattr(ax, "_edgeexit_notes", 0)
    ax._edgeexit_notes = line + 1
    ax.text(0.0, -0.16 - 0.06 * line, text, transform=ax.transAxes, va="top", fontsize=8,
            color="0.3", wrap=True)  # fmt: skip


def _spread(points, count: int, keep) -> list:
    """About ``count`` of ``points`` spread along them, plus every one ``keep`` selects."""
    if len(points) <= count:
        return list(points)
    picked = {round(i * (len(points) - 1) / (count - 1)) for i in range(count)}
    return [p for i, p in enumerate(points) if i in picked or keep(p)]


def _listed(exits) -> str:
    """'exit 2', 'exits 0 and 2', 'exits 0, 1 and 3'."""
    names = [str(i) for i in exits]
    if len(names) == 1:
        return f"exit {names[0]}"
    return f"exits {', '.join(names[:-1])} and {names[-1]}"


def _row(name: str, p: OperatingPoint) -> tuple:
    return (name, p.accuracy, p.mean_latency_ms, p.p95_latency_ms, p.energy_mj)
