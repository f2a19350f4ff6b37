"""Bench a bundle as deployed: accuracy, exits, latency, throughput, energy and speed-up.

The speed-up is measured in the same run against the whole chain (every threshold forced to
inf), alternating early-exit and full calls batch by batch so that drift on a busy machine
hits both alike. The data is passed over several rounds; a mean latency is the median over
rounds of each round's mean, so one preempted call (a 100 ms stall on a shared machine) cannot
swing a mean over a few hundred samples, and the speed-up is the median of the rounds' paired
ratios. Per-sample latency is the latency of the call a sample was in (batch 1 unless asked
otherwise). Device path: numpy, onnxruntime and rich only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from edgeexit.bundle import read_manifest
from edgeexit.data import load_data
from edgeexit.errors import InputError


@dataclass(frozen=True)
class BenchOptions:
    batch_size: int = 1
    target: str | None = None
    warmup_calls: int = 8
    rounds: int = 5  # passes over the data; accuracy and exits come from the first

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"--batch is {self.batch_size}; expected a positive integer")
        if self.rounds < 1:
            raise InputError(f"--rounds is {self.rounds}; expected a positive integer")


@dataclass(frozen=True)
class BenchReport:
    """What ``edgeexit bench`` measured."""

    samples: int
    batch_size: int
    accuracy: float | None
    exit_counts: tuple[int, ...]
    mean_latency_ms: float
    median_latency_ms: float  # robust to preemption spikes on a busy machine
    p95_latency_ms: float
    throughput_per_s: float
    energy_mj_per_sample: float | None
    energy_source: str  # 'measured (rapl)', 'modeled' or 'none'
    full_mean_latency_ms: float
    full_accuracy: float | None
    predicted_mean_latency_ms: float | None  # what calibrate expected, if it ran
    speedup: float  # median over rounds of (full round mean / early-exit round mean)
    rounds: int

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "batch_size": self.batch_size,
            "accuracy": self.accuracy,
            "exit_counts": list(self.exit_counts),
            "mean_latency_ms": self.mean_latency_ms,
            "median_latency_ms": self.median_latency_ms,
            "p95_latency_ms": self.p95_latency_ms,
            "throughput_per_s": self.throughput_per_s,
            "energy_mj_per_sample": self.energy_mj_per_sample,
            "energy_source": self.energy_source,
            "full_mean_latency_ms": self.full_mean_latency_ms,
            "full_accuracy": self.full_accuracy,
            "speedup": self.speedup,
            "rounds": self.rounds,
            "predicted_mean_latency_ms": self.predicted_mean_latency_ms,
        }

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        title = f"bench: {self.samples} samples x {self.rounds} rounds, batch {self.batch_size}"
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("early exit", justify="right")
        table.add_column("all segments", justify="right")
        if self.accuracy is not None:
            table.add_row("accuracy", f"{self.accuracy:.2%}", f"{self.full_accuracy:.2%}")
        table.add_row(
            "mean latency ms", f"{self.mean_latency_ms:.3f}", f"{self.full_mean_latency_ms:.3f}"
        )
        table.add_row("median latency ms", f"{self.median_latency_ms:.3f}", "")
        table.add_row("p95 latency ms", f"{self.p95_latency_ms:.3f}", "")
        table.add_row("throughput /s", f"{self.throughput_per_s:.1f}", "")
        energy = "n/a" if self.energy_mj_per_sample is None else f"{self.energy_mj_per_sample:.4f}"
        table.add_row(f"energy mJ/sample ({self.energy_source})", energy, "")
        table.add_row("speed-up", f"{self.speedup:.2f}x", "1.00x")
        if self.predicted_mean_latency_ms is not None:
            table.add_row(
                "calibrate predicted mean ms", f"{self.predicted_mean_latency_ms:.3f}", ""
            )
        yield table
        yield "exits: " + ", ".join(f"{i}: {c}" for i, c in enumerate(self.exit_counts))


def bench_bundle(
    bundle_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    options: BenchOptions = BenchOptions(),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> BenchReport:
    """Run the bundle over the data as deployed and against the full chain, alternating."""
    from edgeexit.runtime import Runtime  # lazily: onnxruntime is heavy to import

    manifest = read_manifest(bundle_dir)
    dataset = load_data(data_path, manifest.inputs)
    runtime = Runtime(bundle_dir, target=options.target)
    dataset.check_labels(runtime.num_classes, str(data_path))
    full = [math.inf] * manifest.num_exits
    n, b = len(dataset), options.batch_size
    batches = [dataset.take(slice(s, min(s + b, n))).inputs for s in range(0, n, b)]
    for k in range(min(options.warmup_calls, len(batches))):
        runtime.run(batches[k])
        runtime.run(batches[k], thresholds=full)
    rounds: list[tuple[list, list]] = []
    for r in range(options.rounds):
        early, full_runs = [], []
        for k, xs in enumerate(batches):
            pair = [(early, None), (full_runs, full)]
            for sink, thresholds in pair if (k + r) % 2 == 0 else reversed(pair):
                sink.append(runtime.run(xs, thresholds=thresholds))
            if progress is not None:
                progress(r * n + min((k + 1) * b, n), options.rounds * n)
        rounds.append((early, full_runs))
    return _summarise(rounds, dataset.labels, b, manifest.num_exits, manifest.extra)


def _summarise(rounds, labels, batch_size, num_exits, extra) -> BenchReport:
    early, full_runs = rounds[0]
    early_all = [r for e, _ in rounds for r in e]
    per_sample = np.concatenate([np.full(len(r.exit_index), r.latency_ms) for r in early_all])
    early_means = np.array([_mean_per_sample_ms(e) for e, _ in rounds])
    full_means = np.array([_mean_per_sample_ms(f) for _, f in rounds])
    exits = np.concatenate([r.exit_index for r in early])
    energies = [r.energy_mj for r in early_all]
    energy = None if any(e is None for e in energies) else sum(energies) / len(per_sample)
    source = early[0].energy_label if energy is not None else "none"
    predicted = (extra.get("calibration") or {}).get("expected", {}).get("mean_latency_ms")
    mean_ms = float(np.median(early_means))
    return BenchReport(
        samples=len(exits),
        batch_size=batch_size,
        accuracy=_accuracy(early, labels),
        exit_counts=tuple(np.bincount(exits, minlength=num_exits).tolist()),
        mean_latency_ms=mean_ms,
        median_latency_ms=float(np.median(per_sample)),
        p95_latency_ms=float(np.quantile(per_sample, 0.95)),
        throughput_per_s=_throughput(rounds),
        energy_mj_per_sample=energy,
        energy_source=source,
        full_mean_latency_ms=float(np.median(full_means)),
        full_accuracy=_accuracy(full_runs, labels),
        predicted_mean_latency_ms=predicted,
        speedup=float(np.median(full_means / early_means)),
        rounds=len(rounds),
    )


def _mean_per_sample_ms(results) -> float:
    """Mean over samples of the latency of the call each sample was in."""
    samples = sum(len(r.exit_index) for r in results)
    return sum(r.latency_ms * len(r.exit_index) for r in results) / samples


def _throughput(rounds) -> float:
    """Early-exit samples per second: the median over rounds."""
    per_round = [
        sum(len(r.exit_index) for r in e) / (sum(r.latency_ms for r in e) / 1e3) for e, _ in rounds
    ]
    return float(np.median(per_round))


def _accuracy(results, labels) -> float | None:
    if labels is None:
        return None
    predictions = np.concatenate([r.predictions for r in results])
    return float((predictions == labels).mean())
