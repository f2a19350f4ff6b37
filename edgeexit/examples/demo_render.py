"""How the demo's report looks: full model vs calibrated bundle, the exit histogram, energy
with its source, and the files written. Kept apart from ``demo.py`` so that one reads as the
pipeline and this one as the layout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.table import Table

from edgeexit.measure.bench import verdict_lines

BAR_WIDTH = 32


def render_demo(report: Any) -> Iterator[Any]:
    yield _comparison(report)
    if report.calibration.guaranteed:
        yield f"calibrate certified: {report.calibration.guaranteed}"
    yield from verdict_lines(report.bench)
    yield _histogram(report)
    yield _energy_note(report)
    yield _files(report)


def _comparison(report: Any) -> Table:
    bench, cal = report.bench, report.calibration
    table = Table(
        title=f"Full model vs calibrated bundle "
        f"({bench.samples} held-out samples, batch {bench.batch_size})"
    )
    table.add_column("")
    table.add_column("full model (no early exit)", justify="right")
    table.add_column("calibrated bundle", justify="right")
    if bench.accuracy is not None:
        table.add_row("accuracy", f"{bench.full_accuracy:.2%}", f"{bench.accuracy:.2%}")
    table.add_row(
        "mean latency ms", f"{bench.full_mean_latency_ms:.3f}", f"{bench.mean_latency_ms:.3f}"
    )
    low, high = bench.speedup_ci
    table.add_row(
        "speed-up (95% CI)", "1.00x", f"[bold]{bench.speedup:.2f}x[/bold] ({low:.2f}-{high:.2f}x)"
    )
    table.add_row(
        f"energy mJ/sample ({bench.energy})",
        *("n/a" if e is None else f"{e:.4f}" for e in report.energy_mj),
    )
    shown = ", ".join("never" if t == float("inf") else f"{t:.3f}" for t in cal.thresholds[:-1])
    table.caption = f"budget: {cal.budget.describe()}; thresholds: {shown}, last always"
    return table


def _histogram(report: Any) -> Table:
    counts = report.bench.exit_counts
    total = max(sum(counts), 1)
    cumulative_ms = report.calibration.costs.latency_ms
    table = Table(title="Where the samples left (exit histogram)")
    for col in ("exit", "samples", "share", "", "cost ms (profile)"):
        table.add_column(col, justify="right" if col else "left")
    for i, count in enumerate(counts):
        bar = "█" * round(BAR_WIDTH * count / total)
        table.add_row(str(i), str(count), f"{count / total:.1%}", bar, f"{cumulative_ms[i]:.3f}")
    return table


def _energy_note(report: Any) -> str:
    source = report.bench.energy
    if source.kind == "modeled":
        return (
            "energy: [yellow]modeled[/yellow], not measured: this machine has no energy sensor "
            "edgeexit can read, so energy = the target's active power x the mean latency "
            "above, for both columns."
        )
    if source.kind == "none":
        return "energy: none (no sensor and no power model for this target)."
    return f"energy: {source}, read around every call (full model: from the device profile)."


def _files(report: Any) -> str:
    f = report.files
    lines = [f"wrote {f.out_dir}/:", f"  bundle      {f.bundle_dir}  (thresholds in manifest.json)"]
    if f.model is not None:
        lines.append(f"  model       {f.model}")
    lines.append(f"  profile     {f.profile}")
    if f.pareto_png is not None:
        lines.append(f"  pareto      {f.pareto_png}")
    else:
        lines.append("  pareto      skipped: pip install 'edgeexit[plot]' for the PNG")
    lines.append(f"  data        {f.calibration_data}, {f.test_data}")
    lines.append(f"next: edgeexit bench {f.bundle_dir} --data {f.test_data}")
    return "\n".join(lines)
