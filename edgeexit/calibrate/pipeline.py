"""Calibrate a bundle: the I/O around the pure search.

One pass of the calibration data through every exit (``Runtime.run_all_exits``) gives the
:class:`ExitTable`; segment costs come from a device profile or are measured here at batch 1;
the search picks thresholds; the manifest gets them and the report under ``calibration``,
written atomically, only once everything has succeeded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.bundle import read_manifest, write_manifest
from edgeexit.calibrate.budget import Budget
from edgeexit.calibrate.costs import SegmentCosts, load_profile_costs
from edgeexit.calibrate.guarantee import certify
from edgeexit.calibrate.report import CalibrationReport
from edgeexit.calibrate.search import ExitTable, search
from edgeexit.data import Dataset, load_data

Progress = Callable[[str, int, int], None]  # (stage, done, total)
WARMUP_CALLS = 30  # per exit, untimed, before measuring costs here


@dataclass(frozen=True)
class CalibrateOptions:
    """How to calibrate, beyond the budget.

    ``profile``: a device profile JSON (``edgeexit profile``); None measures costs here.
    ``timing_samples`` x ``timing_repeats``: batch-1 calls per exit when measuring here.
    ``seed``: the guarantee mode's random split.
    """

    profile: Path | None = None
    target: str | None = None
    batch_size: int = 256
    timing_samples: int = 48
    timing_repeats: int = 3
    seed: int = 0


def build_report(table: ExitTable, costs: SegmentCosts, budget: Budget) -> CalibrationReport:
    """The pure part: search (or certify) and package the result."""
    common = dict(
        budget=budget,
        costs=costs,
        final_accuracy=float(table.correct[-1].mean()),
        labeled=table.labeled,
        num_samples=table.num_samples,
    )
    if budget.guarantee:
        cert = certify(table, costs, budget)
        return CalibrationReport(
            chosen=cert.point, shared=None, front=(), shared_front=(), certificate=cert, **common
        )
    result = search(table, costs, budget)
    return CalibrationReport(
        chosen=result.per_exit,
        shared=result.shared,
        front=result.front,
        shared_front=result.shared_front,
        **common,
    )


def collect_table(
    runtime, dataset: Dataset, *, batch_size: int = 256, progress: Progress | None = None
) -> ExitTable:
    """Every calibration sample through every exit, once."""
    report = None if progress is None else (lambda done, total: progress("exits", done, total))
    outputs = runtime.run_all_exits(dataset.inputs, batch_size=batch_size, progress=report)
    predictions = outputs.logits.argmax(axis=2)
    return ExitTable.from_predictions(predictions, outputs.scores, dataset.labels)


def measure_costs(
    runtime,
    dataset: Dataset,
    *,
    samples: int = 48,
    repeats: int = 3,
    progress: Progress | None = None,
) -> SegmentCosts:
    """Batch-1 cost of leaving at each exit, measured here through ``Runtime.run``.

    Forcing every sample out at exit i (threshold -inf there, inf before) times exactly what
    a deployed sample leaving at i pays, per-call overhead included; exits are interleaved
    per sample so drift on a busy machine hits them alike. Each of the ``repeats`` passes
    gives a median per exit; the quietest pass sets the costs (a device runs alone).
    """
    n_exits = runtime.num_exits
    forced = [[math.inf] * i + [-math.inf] * (n_exits - i) for i in range(n_exits)]
    rows = np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).astype(int)
    one = [dataset.take(slice(r, r + 1)).inputs for r in rows]
    for _ in range(WARMUP_CALLS):  # first calls allocate buffers and settle ONNX Runtime
        for thresholds in forced:
            runtime.run(one[0], thresholds=thresholds)
    latency = np.zeros((repeats * len(one), n_exits))
    energy = np.zeros_like(latency)
    measured, source = True, "none"
    for k in range(repeats * len(one)):
        order = range(n_exits) if k % 2 == 0 else reversed(range(n_exits))
        for i in order:
            result = runtime.run(one[k % len(one)], thresholds=forced[i])
            latency[k, i] = result.latency_ms
            energy[k, i] = np.nan if result.energy_mj is None else result.energy_mj
            measured &= bool(result.energy_measured)
            source = result.energy_source
        if progress is not None:
            progress("timing", k + 1, len(latency))
    return _costs_from_cumulative(
        repeats, latency, energy, measured, source, runtime.target.active_power_w
    )


def _costs_from_cumulative(
    repeats: int,
    latency: np.ndarray,
    energy: np.ndarray,
    measured: bool,
    source: str,
    power_w: float,
) -> SegmentCosts:
    # Each repeat (a pass over the samples) gives a median per exit; the quietest pass is
    # kept, so a burst of load from other processes while measuring does not set the costs.
    # Leaving later never costs less; enforce it so noise cannot give negative segments.
    rounds = latency.reshape(repeats, -1, latency.shape[1])
    cum_median = np.maximum.accumulate(np.min(np.median(rounds, axis=1), axis=0))
    cum_p95 = np.maximum.accumulate(np.quantile(latency, 0.95, axis=0))
    if measured and not np.isnan(energy).any():
        cum_energy = np.maximum.accumulate(np.median(energy, axis=0))
        energy_mj, energy_source = _diffs(cum_energy), f"measured ({source})"
    elif power_w > 0:  # W x ms = mJ
        energy_mj, energy_source = _diffs(cum_median * power_w), "modeled"
    else:
        energy_mj, energy_source = None, "none"
    return SegmentCosts(
        latency_ms=_diffs(cum_median),
        p95_latency_ms=_diffs(cum_p95),
        energy_mj=energy_mj,
        energy_source=energy_source,
        source="measured here (batch 1)",
    )


def _diffs(cumulative: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.diff(cumulative, prepend=0.0))


def calibrate_bundle(
    bundle_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    budget: Budget,
    options: CalibrateOptions = CalibrateOptions(),
    *,
    progress: Progress | None = None,
    write: bool = True,
    costs: SegmentCosts | None = None,
) -> CalibrationReport:
    """Calibrate ``bundle_dir`` on ``data_path`` to ``budget``; write the manifest if ``write``.

    ``costs`` (e.g. from an earlier report) skips loading or measuring them again.

    Any failure (bad data, an unreachable budget, nothing certified) raises before the
    manifest is touched, and the write itself is atomic.
    """
    from edgeexit.runtime import Runtime  # lazily: onnxruntime is heavy to import

    manifest = read_manifest(bundle_dir)
    dataset = load_data(data_path, manifest.inputs)
    runtime = Runtime(bundle_dir, target=options.target)
    if costs is not None:
        pass  # given by the caller
    elif options.profile is not None:
        power_w = runtime.target.active_power_w
        costs = load_profile_costs(options.profile, manifest, active_power_w=power_w)
    else:
        costs = measure_costs(
            runtime,
            dataset,
            samples=options.timing_samples,
            repeats=options.timing_repeats,
            progress=progress,
        )
    table = collect_table(runtime, dataset, batch_size=options.batch_size, progress=progress)
    report = build_report(table, costs, budget)
    if write:
        updated = manifest.with_thresholds(report.thresholds).with_extra(
            calibration=report.to_json()
        )
        write_manifest(bundle_dir, updated)
    return report
