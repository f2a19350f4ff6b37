"""Bench a bundle as deployed: accuracy, exits, latency, throughput, energy and speed-up.

The speed-up is measured in the same run against the whole chain (every threshold forced to
inf), alternating early-exit and full calls batch by batch so that drift on a busy machine
hits both alike. The data is passed over several rounds; a sample's latency is the median
over rounds of the latency of the call it was in (batch 1 unless asked otherwise), so one
preempted call (a 100 ms stall on a shared machine) cannot set a figure; means are over
samples, and the speed-up is the ratio of the two means shown. The budget calibrate wrote
into the manifest is checked on this data (``verdict``): met or missed, with its margin and
a bootstrap interval. Device path: numpy, onnxruntime and rich only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from edgeexit.budget import Budget
from edgeexit.bundle import read_manifest
from edgeexit.data import load_data
from edgeexit.energy import NONE, EnergySource
from edgeexit.errors import BundleError, CalibrationError, InputError
from edgeexit.measure import verdict
from edgeexit.measure.rounds import round_order
from edgeexit.offload.device import SplitRuntime
from edgeexit.runtime import Runtime


@dataclass(frozen=True)
class BenchOptions:
    batch_size: int = 1
    target: str | None = None
    warmup_calls: int = 8
    rounds: int = 5  # passes over the data; accuracy and exits come from the first
    server: str | None = None  # a split bundle's server: the hard samples finish there
    timeout_s: float = 1.0  # the longest a call waits for it (then: degraded answers)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"`batch_size` is {self.batch_size}; expected a positive integer")
        if self.rounds < 1:
            raise InputError(f"`rounds` is {self.rounds}; expected a positive integer")


@dataclass(frozen=True)
class BenchReport:
    """What ``edgeexit bench`` measured, and whether the calibrated budget held.

    Latencies: per sample, the median over rounds of the latency of the call it was in (one
    preempted call cannot set a figure); mean and p95 are over samples. The full model is
    the bundle with every early exit disabled, as it deploys (its plain graph, one call,
    where it has one): its mean is the same statistic, and the speed-up is the ratio of the
    two means shown.
    Intervals: 95 % percentile bootstrap over samples.
    """

    samples: int
    batch_size: int
    accuracy: float | None
    exit_counts: tuple[int, ...]
    mean_latency_ms: float
    mean_latency_ci: tuple[float, float]
    median_latency_ms: float
    p95_latency_ms: float
    throughput_per_s: float
    energy_mj_per_sample: float | None
    energy: EnergySource  # of energy_mj_per_sample
    full_mean_latency_ms: float
    full_accuracy: float | None
    predicted_mean_latency_ms: float | None  # what calibrate expected, if it ran
    predicted_batch_size: int | None  # the batch size calibrate's costs were measured at
    speedup: float  # full_mean_latency_ms / mean_latency_ms
    speedup_ci: tuple[float, float]
    rounds: int
    budget: str | None  # the calibrated budget, described; None for an uncalibrated bundle
    checks: tuple[verdict.Check, ...]
    warnings: tuple[str, ...]
    early_exits: bool = True  # some threshold before the last lets a sample leave
    # a split bundle benched with its server: the shares of samples (over every round) sent
    # to it, and answered from the device's last exit because it did not answer in time
    offloaded: float | None = None
    degraded: float | None = None

    @property
    def verdict(self) -> str:
        """'met', 'missed' (some check missed) or 'no budget' (bundle never calibrated)."""
        if not self.checks:
            return "no budget"
        return "met" if all(c.met for c in self.checks) else "missed"

    @property
    def passed(self) -> bool:
        """What ``bench --check`` asks: every budget met, and, where the bundle exits early,
        not slower than the full model (the whole 95 % interval of the speed-up below 1:
        noise alone cannot fail it). A bundle sending every sample to the last exit is the
        full model: it cannot be slower than itself, whatever the noise says."""
        return self.verdict == "met" and (not self.early_exits or self.speedup_ci[1] >= 1.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "batch_size": self.batch_size,
            "accuracy": self.accuracy,
            "exit_counts": list(self.exit_counts),
            "mean_latency_ms": self.mean_latency_ms,
            "mean_latency_ci_ms": list(self.mean_latency_ci),
            "median_latency_ms": self.median_latency_ms,
            "p95_latency_ms": self.p95_latency_ms,
            "throughput_per_s": self.throughput_per_s,
            "energy_mj_per_sample": self.energy_mj_per_sample,
            "energy_source": self.energy.label,
            "full_mean_latency_ms": self.full_mean_latency_ms,
            "full_accuracy": self.full_accuracy,
            "speedup": self.speedup,
            "speedup_ci": list(self.speedup_ci),
            "rounds": self.rounds,
            "predicted_mean_latency_ms": self.predicted_mean_latency_ms,
            "predicted_batch_size": self.predicted_batch_size,
            "budget": self.budget,
            "verdict": self.verdict,
            "checks": [c.to_json() for c in self.checks],
            "warnings": list(self.warnings),
            "offloaded": self.offloaded,
            "degraded": self.degraded,
        }

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        title = f"bench: {self.samples} samples x {self.rounds} rounds, batch {self.batch_size}"
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("early exit", justify="right")
        table.add_column("full model", justify="right")
        if self.accuracy is not None:
            table.add_row("accuracy", f"{self.accuracy:.2%}", f"{self.full_accuracy:.2%}")
        low, high = self.mean_latency_ci
        table.add_row(
            "mean latency ms",
            f"{self.mean_latency_ms:.3f} ({low:.3f}-{high:.3f})",
            f"{self.full_mean_latency_ms:.3f}",
        )
        table.add_row("median latency ms", f"{self.median_latency_ms:.3f}", "")
        table.add_row("p95 latency ms", f"{self.p95_latency_ms:.3f}", "")
        table.add_row("throughput /s", f"{self.throughput_per_s:.1f}", "")
        energy = "n/a" if self.energy_mj_per_sample is None else f"{self.energy_mj_per_sample:.4f}"
        table.add_row(f"energy mJ/sample ({self.energy})", energy, "")
        low, high = self.speedup_ci
        table.add_row("speed-up", f"{self.speedup:.2f}x ({low:.2f}-{high:.2f}x)", "1.00x")
        if self.offloaded is not None:
            table.add_row("sent to the server", f"{self.offloaded:.1%}", "")
            style = "red" if self.degraded else "green"
            table.add_row("degraded (no answer in time)", f"[{style}]{self.degraded:.1%}[/]", "")
        if self.predicted_mean_latency_ms is not None:
            table.add_row(
                f"calibrate predicted (batch {self.predicted_batch_size})",
                f"{self.predicted_mean_latency_ms:.3f}",
                "",
            )
        table.caption = (
            "(a-b): 95 % bootstrap interval over samples; full model: every early exit "
            "disabled, as the bundle deploys it (one graph where it has its plain graph)"
        )
        yield table
        yield "exits: " + ", ".join(f"{i}: {c}" for i, c in enumerate(self.exit_counts))
        yield from verdict_lines(self)


def verdict_lines(report: BenchReport) -> list[str]:
    """The verdict in words, rich-marked: one line per budget, then the warnings."""
    if report.budget is None:
        lines = ["verdict: no budget to check (the bundle was never calibrated)"]
    else:
        word = "[green]met[/green]" if report.verdict == "met" else "[bold red]MISSED[/bold red]"
        lines = [f"verdict on held-out data: budget ({report.budget}) {word}"]
        for check in report.checks:
            colour = "green" if check.met else "red"
            lines.append(f"  [{colour}]{check.describe()}[/{colour}]")
    lines += [f"[yellow]warning:[/yellow] {w}" for w in report.warnings]
    return lines


def bench_bundle(
    bundle_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    options: BenchOptions = BenchOptions(),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> BenchReport:
    """Run the bundle over the data as deployed and against the full chain, alternating."""
    manifest = read_manifest(bundle_dir)
    if manifest.output != "logits":
        raise BundleError(
            f"{bundle_dir}'s exits give {manifest.output}, not one class per sample: bench "
            "compares per-sample predictions with the full chain and cannot read them yet; "
            "`edgeexit run --json` gives each output and exit"
        )
    dataset = load_data(data_path, manifest.inputs)
    if options.server is not None:  # the device's part, the rest on the server
        runtime = SplitRuntime(bundle_dir, server=options.server, timeout_s=options.timeout_s,
                               target=options.target)  # fmt: skip
    else:
        runtime = Runtime(bundle_dir, target=options.target)
    manifest = runtime.manifest  # capped at the exit calibrate chose, if it did
    dataset.check_labels(runtime.num_classes, str(data_path))
    full = Runtime(bundle_dir, target=options.target, max_exit=manifest.num_exits - 1,
                   thresholds=(math.inf,) * manifest.num_exits)  # fmt: skip
    n, b = len(dataset), options.batch_size
    batches = [dataset.take(slice(s, min(s + b, n))).inputs for s in range(0, n, b)]
    for k in range(min(options.warmup_calls, len(batches))):
        runtime.run(batches[k])
        full.run(batches[k])
    rounds: list[tuple[list, list]] = []
    for r in range(options.rounds):
        early, full_runs = [], []
        for k, xs in enumerate(batches):
            pair = [(early, runtime), (full_runs, full)]
            for sink, deployed in round_order(pair, k + r):
                sink.append(deployed.run(xs))
            if progress is not None:
                progress(r * n + min((k + 1) * b, n), options.rounds * n)
        rounds.append((early, full_runs))
    early_exits = any(not math.isinf(t) for t in manifest.thresholds[:-1])
    report = _summarise(rounds, dataset.labels, b, manifest.num_exits, manifest.extra, early_exits)
    if options.server is None:
        return report
    calls = [r for early, _ in rounds for r in early]
    total = sum(len(r.exit_index) for r in calls)
    return replace(
        report,
        offloaded=sum(int(r.offloaded.sum()) for r in calls) / total,
        degraded=sum(int(r.degraded.sum()) for r in calls) / total,
    )


def _per_sample(rounds: list[list], value) -> np.ndarray:
    """[rounds, samples]: ``value(result)`` of the call each sample was in, per round."""
    return np.array(
        [np.concatenate([np.full(len(r.exit_index), value(r)) for r in calls]) for calls in rounds]
    )


def _summarise(rounds, labels, batch_size, num_exits, extra, early_exits) -> BenchReport:
    early, full_runs = rounds[0]
    early_rounds = _per_sample([e for e, _ in rounds], lambda r: r.latency_ms)
    early_ms = np.median(early_rounds, axis=0)
    full_ms = np.median(_per_sample([f for _, f in rounds], lambda r: r.latency_ms), axis=0)
    energies = [r.energy_mj for e, _ in rounds for r in e]
    energy = None
    if all(e is not None for e in energies):
        per_call = _per_sample([e for e, _ in rounds], lambda r: r.energy_mj / len(r.exit_index))
        energy = np.median(per_call, axis=0)
    source = early[0].energy_provenance if energy is not None else NONE
    exits = np.concatenate([r.exit_index for r in early])
    index = verdict.resample(len(exits))
    calibration = extra.get("calibration") or {}
    predicted = calibration.get("expected", {}).get("mean_latency_ms")
    predicted_batch = calibration.get("profile", {}).get("batch_size", 1) if predicted else None
    held = verdict.HeldOut(
        early_ms=early_ms,
        full_ms=full_ms,
        early_predictions=np.concatenate([r.predictions for r in early]),
        full_predictions=np.concatenate([r.predictions for r in full_runs]),
        labels=labels,
        energy_mj=energy,
        energy=source,
    )
    budget = _budget(calibration)
    checks = () if budget is None else verdict.checks(budget, held, index)
    mean_ms, full_mean = float(early_ms.mean()), float(full_ms.mean())
    speedup = full_mean / mean_ms
    speedup_ci = verdict.interval(
        lambda i: full_ms[i].mean(axis=1) / early_ms[i].mean(axis=1), index
    )
    return BenchReport(
        samples=len(exits),
        batch_size=batch_size,
        accuracy=_accuracy(early, labels),
        exit_counts=tuple(np.bincount(exits, minlength=num_exits).tolist()),
        mean_latency_ms=mean_ms,
        mean_latency_ci=verdict.interval(lambda i: early_ms[i].mean(axis=1), index),
        median_latency_ms=float(np.median(early_ms)),
        p95_latency_ms=float(np.quantile(early_ms, 0.95)),
        throughput_per_s=_throughput([e for e, _ in rounds]),
        energy_mj_per_sample=None if energy is None else float(energy.mean()),
        energy=source,
        full_mean_latency_ms=full_mean,
        full_accuracy=_accuracy(full_runs, labels),
        predicted_mean_latency_ms=predicted,
        predicted_batch_size=predicted_batch,
        speedup=speedup,
        speedup_ci=speedup_ci,
        rounds=len(rounds),
        budget=None if budget is None else budget.describe(),
        checks=checks,
        warnings=verdict.warnings(
            speedup,
            speedup_ci,
            mean_ms,
            predicted,
            predicted_batch,
            batch_size,
            early_exits=early_exits,
        ),  # fmt: skip
        early_exits=early_exits,
    )


def _budget(calibration: dict) -> Budget | None:
    """The budget calibrate wrote into the manifest, or None if it never ran."""
    doc = calibration.get("budget")
    if not isinstance(doc, dict):
        return None
    try:
        return Budget(**doc)
    except (TypeError, CalibrationError) as err:
        raise BundleError(f"the manifest's calibration budget cannot be read: {err}") from err


def _throughput(early_rounds) -> float:
    """Early-exit samples per second: the median over rounds."""
    per_round = [
        sum(len(r.exit_index) for r in calls) / (sum(r.latency_ms for r in calls) / 1e3)
        for calls in early_rounds
    ]
    return float(np.median(per_round))


def _accuracy(results, labels) -> float | None:
    if labels is None:
        return None
    predictions = np.concatenate([r.predictions for r in results])
    return float((predictions == labels).mean())
