"""Calibrate a bundle: the I/O around the pure search.

One pass of the calibration data through every exit (``Runtime.run_all_exits``) gives the
:class:`ExitTable`; segment costs come from a device profile or are measured here at batch 1;
the search picks thresholds; the manifest gets them and the report under ``calibration``,
written atomically, only once everything has succeeded (the plot, if asked for, is rendered
and staged before the manifest is touched). The bundle is locked for the whole run: a
second calibrate or an export onto it is refused rather than one result silently lost.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeexit import files
from edgeexit.budget import Budget
from edgeexit.bundle import read_manifest, write_manifest
from edgeexit.calibrate.costs import ExitCosts, exit_costs, load_profile_costs
from edgeexit.calibrate.guarantee import certify
from edgeexit.calibrate.quality import QualityReport, calibrate_quality
from edgeexit.calibrate.report import CalibrationReport
from edgeexit.calibrate.search import ExitTable, search
from edgeexit.calibrate.tokens import TokenReport, calibrate_tokens
from edgeexit.data import Dataset, load_data
from edgeexit.energy import NoMeter, get_meter
from edgeexit.errors import CalibrationError
from edgeexit.measure.cost_profile import CostProfile
from edgeexit.measure.profiling import measure_exit_costs, measure_head_costs, segment_inputs
from edgeexit.runtime import Runtime
from edgeexit.split import renewed

Progress = Callable[[str, int, int], None]  # (stage, done, total)
WARMUP_CALLS = 100  # per exit, untimed, before measuring costs here


@dataclass(frozen=True)
class CalibrateOptions:
    """How to calibrate, beyond the budget.

    ``profile``: a device profile JSON (``edgeexit profile``); None measures costs here:
    ``timing_samples`` rows of the data cycled through at batch 1, in interleaved rounds of
    ``timing_calls`` calls per exit, at least ``timing_rounds`` of them over at least
    ``timing_min_seconds``, and more (up to ``timing_max_rounds``, ``timing_max_seconds``)
    until every exit's cost is known within ``timing_spread`` (a 95 % interval, relative),
    so that the same command on the same machine gives the same costs.
    ``seed``: the random split of quality and per-token calibration (a certified budget
    uses every sample, no split). ``plot``: where to save the Pareto front
    as a PNG (a new path, or a plot edgeexit wrote).
    """

    profile: Path | None = None
    target: str | None = None
    max_exit: int | None = None  # cap the depth: exits after it are dropped from the chain
    # cap it instead where the loaded segments fit in this much resident memory, MB (from
    # the profile's per-segment figures; needs ``profile``)
    max_memory_mb: float | None = None
    # or where a call leaving at the cap takes at most this long, ms (the profile's p95)
    max_latency_ms: float | None = None
    plot: Path | None = None
    batch_size: int = 256
    timing_samples: int = 48
    timing_calls: int = 8
    timing_rounds: int = 24
    timing_max_rounds: int = 4000
    timing_min_seconds: float = 2.0
    timing_max_seconds: float = 10.0
    timing_spread: float = 0.02
    seed: int = 0


def build_report(table: ExitTable, costs: ExitCosts, budget: Budget) -> CalibrationReport:
    """The pure part: search, certify, and package the result.

    The per-exit search gives the fronts and the calibration-set estimate; Learn-then-Test
    (``certify``) picks the thresholds, so that every part of the budget holds on new data
    at the stated confidence (the cost caps insofar as they depend on where samples leave).
    ``estimate`` keeps what the uncertified search would have chosen, to show what the
    guarantee costs. --risk (guarantee mode) has no front: Learn-then-Test alone.
    """
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
    cert = certify(table, costs, budget)
    return CalibrationReport(
        chosen=cert.point,
        shared=result.shared,
        front=result.front,
        shared_front=result.shared_front,
        certificate=cert,
        estimate=result.per_exit,
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


def quality_report(
    runtime, dataset: Dataset, costs: ExitCosts, budget: Budget, options, progress
) -> QualityReport:
    """Every sample through every exit once, then the quality search with its held-out
    check (``calibrate.quality``), for a bundle whose exits give tensors."""
    report = None if progress is None else (lambda done, total: progress("exits", done, total))
    outputs = runtime.run_all_exits(dataset.inputs, batch_size=options.batch_size,
                                    progress=report)  # fmt: skip
    return calibrate_quality(
        outputs.scores, outputs.logits, dataset.labels, costs, budget, seed=options.seed
    )


def _check_budget_kind(budget: Budget, tensors: bool, options: CalibrateOptions) -> None:
    """A quality budget for exits that give tensors, accuracy budgets for class logits
    (and per-token exits, whose budget is checked by ``calibrate_tokens``)."""
    if not tensors and budget.max_quality_drop is not None:
        raise CalibrationError(
            "`max_quality_drop` is for bundles whose exits give images or other tensors; "
            "this one gives class logits: give `max_accuracy_drop` (e.g. 0.01)"
        )
    if tensors and options.plot is not None:
        raise CalibrationError(
            "`plot` draws accuracy against latency; a bundle whose exits give tensors has "
            "no plot yet: leave it out (the report lists both splits)"
        )


def measure_costs(
    runtime,
    dataset: Dataset,
    options: CalibrateOptions,
    *,
    full: Runtime | None = None,
    progress: Progress | None = None,
) -> ExitCosts:
    """Batch-1 cost of leaving at each exit, measured here through ``Runtime.run``.

    The same measurement ``edgeexit profile`` records per exit (``measure_exit_costs``):
    every sample forced out at exit i, the runtime's per-call overhead included, and the
    full model as deployed (every early exit disabled), interleaved round by round; the
    costs are each one's median of round means (``exit_costs``), with rounds added while
    they scatter (``CalibrateOptions``). ``full``: the bundle opened with every early exit
    disabled (``full_model_runtime``); without it the full model's cost is the last exit's
    with the skipped heads credited.
    """
    meter = get_meter(runtime.target)  # its own windows over each block: sensors are slow
    rows = np.linspace(0, len(dataset) - 1, min(options.timing_samples, len(dataset)))
    one = [dataset.take(slice(r, r + 1)).inputs for r in rows.astype(int)]
    report = None if progress is None else (lambda done, total: progress("timing", done, total))
    timed = measure_exit_costs(
        runtime, one, full=full, rounds=options.timing_rounds, calls=options.timing_calls,
        warmup=WARMUP_CALLS, meter=meter, progress=report, until_spread=options.timing_spread,
        max_rounds=options.timing_max_rounds, max_seconds=options.timing_max_seconds,
        min_seconds=options.timing_min_seconds,
    )  # fmt: skip
    exits, full_cost = timed[: runtime.num_exits], timed[runtime.num_exits :]
    heads = None
    if not runtime.bodies_in_use:  # every head ran: what skipping each one saves
        heads = measure_head_costs(runtime, segment_inputs(runtime, one[0]))
    return exit_costs(
        exits,
        batch_size=1,
        energy=meter.provenance,
        power_w=runtime.target.active_power_w,
        power_model=runtime.target.name,
        source="measured here (batch 1)",
        head_ms=heads,
        full=full_cost[0] if full_cost else None,
    )


def full_model_runtime(runtime: Runtime) -> Runtime:
    """The same bundle, target and depth opened with every early exit disabled: the full
    model as it deploys (its plain graph, one call, where the bundle has one)."""
    return Runtime(runtime.bundle_dir, target=runtime.target, max_exit=runtime.num_exits - 1,
                   thresholds=(math.inf,) * runtime.num_exits)  # fmt: skip


def calibrate_bundle(
    bundle_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    budget: Budget,
    options: CalibrateOptions = CalibrateOptions(),
    *,
    progress: Progress | None = None,
    write: bool = True,
    costs: ExitCosts | None = None,
) -> CalibrationReport | QualityReport | TokenReport:
    """Calibrate ``bundle_dir`` on ``data_path`` to ``budget``; write the manifest if ``write``.

    A bundle whose exits give tensors is calibrated to a quality budget
    (``Budget.max_quality_drop``, ``calibrate.quality``) and gets a QualityReport.

    ``costs`` (e.g. from an earlier report) skips loading or measuring them again.

    Any failure (bad data, labels outside the model's classes, an unreachable budget,
    nothing certified, a plot that cannot be made) raises before the manifest is touched,
    and the write itself is atomic.
    """
    sources = (bundle_dir, data_path, *([options.profile] if options.profile else []))
    plot_out = None  # refused now, not after the work; created then if new, not replaced
    if options.plot is not None:
        plot_out = files.check_output(options.plot, "plot", inputs=sources)
    read_manifest(bundle_dir)  # a clear error for a path that is no bundle, before locking
    with files.locked(bundle_dir, "calibrate") if write else contextlib.nullcontext() as lock:
        manifest = read_manifest(bundle_dir)
        tokens = manifest.output == "tokens"  # each token leaves at its own exit
        tensors = manifest.output != "logits"  # exits give images or other tensors
        _check_budget_kind(budget, tensors, options)
        cap, capped = _cap(manifest, options)
        # every head runs while costs are timed: a disabled exit is credited its head.
        # Costs from a profile (or the caller) carry their own energy: this host's sensors
        # are then neither probed nor announced (its power model is not what is reported).
        elsewhere = not tokens and (costs is not None or options.profile is not None)
        meter = NoMeter() if elsewhere else None
        runtime = Runtime(bundle_dir, target=options.target, max_exit=cap, bodies=False,
                          meter=meter)  # fmt: skip
        # 'y': a class label per sample, or target tensors shaped like an exit's output
        dataset = load_data(data_path, manifest.inputs, targets=runtime.targets_shape)
        if manifest.output != "tensor":  # class labels, per sample or per token
            dataset.check_labels(runtime.num_classes, str(data_path))
        if tokens:
            pass  # each candidate is run and timed (calibrate/tokens.py)
        elif costs is not None:
            pass  # given by the caller
        elif options.profile is not None:
            costs = load_profile_costs(
                options.profile, runtime.manifest, active_power_w=runtime.target.active_power_w,
                power_model=runtime.target.name,
            )  # fmt: skip
        else:
            full = full_model_runtime(runtime)
            costs = measure_costs(runtime, dataset, options, full=full, progress=progress)
        if tokens:
            report = replace(calibrate_tokens(runtime, dataset, budget, seed=options.seed),
                             depth_cap=capped)  # fmt: skip
        elif tensors:
            report = replace(
                quality_report(runtime, dataset, costs, budget, options, progress), depth_cap=capped
            )
        else:
            table = collect_table(runtime, dataset, batch_size=options.batch_size,
                                  progress=progress)  # fmt: skip
            if progress is not None:  # seconds for thousands of samples: say what it does
                progress("searching and certifying", 0, 1)
            report = replace(build_report(table, costs, budget), depth_cap=capped)
            if progress is not None:
                progress("searching and certifying", 1, 1)
        plot = None
        if plot_out is not None:
            plot = files.Staged(plot_out, report.plot_png(), what="plot")
        try:
            if plot is not None:
                plot.claim()  # a file that appeared at --plot: refused, the manifest untouched
            if write:
                dropped = (math.inf,) * (manifest.num_exits - runtime.num_exits)
                extra = {k: v for k, v in manifest.extra.items() if k != "max_exit"}
                if dropped:  # the runtime caps the chain here from now on
                    extra["max_exit"] = runtime.num_exits - 1
                updated = replace(manifest, extra=extra)
                updated = updated.with_thresholds((*report.thresholds, *dropped)).with_extra(
                    calibration=report.to_json()
                )
                updated = renewed(updated)  # a split bundle keeps its split, under a new id
                lock.check()  # still the bundle measured, not one swapped in around it
                write_manifest(bundle_dir, updated)
        except BaseException:
            if plot is not None:
                plot.discard()
            raise
        if plot is not None:
            plot.commit()
    return report


def _cap(manifest, options: CalibrateOptions) -> tuple[int, str | None]:
    """The exit calibration stops at, and why in words (None: no cap): the one asked for
    (``max_exit``), the deepest whose loaded segments fit in ``max_memory_mb``, the deepest
    whose calls finish within ``max_latency_ms`` (p95, from the profile), whichever is
    shallowest; else the last (a cap an earlier calibration recorded is replaced, not
    inherited)."""
    last = manifest.num_exits - 1
    caps = [] if options.max_exit is None else [(options.max_exit, "asked for (`max_exit`)")]
    for limit, figure in ((options.max_memory_mb, MEMORY), (options.max_latency_ms, PEAK)):
        if limit is not None:
            caps.append(profile_cap(manifest, options.profile, limit, figure))
    if not caps:
        return last, None
    cap, why = min(caps, key=lambda c: c[0])
    return cap, None if cap >= last else f"every sample leaves by exit {cap}: {why}"


def _resident_through(profile: CostProfile, exits: int) -> np.ndarray | None:
    """What is loaded when the chain stops at exit i: segments 0..i, MB (None: unknown)."""
    resident = [s.resident_mb for s in profile.segments[:exits]]
    return None if any(r is None for r in resident) else np.cumsum(resident)


def _call_p95(profile: CostProfile, exits: int) -> np.ndarray:
    return np.array([profile.exit_latency_ms(i, "p95") for i in range(exits)])


@dataclass(frozen=True)
class CapFigure:
    """A per-exit figure from a profile that a depth cap keeps within a budget."""

    param: str  # the option, named as the library names it
    name: str
    unit: str
    per_exit: Callable[[CostProfile, int], np.ndarray | None]  # None: the profile lacks it


MEMORY = CapFigure("max_memory_mb", "resident memory", "MB", _resident_through)
PEAK = CapFigure("max_latency_ms", "p95 latency of a call", "ms", _call_p95)


def profile_cap(
    manifest, profile_path: Path | None, limit: float, figure: CapFigure
) -> tuple[int, str]:
    """The deepest exit whose ``figure``, as the profile measured it, is within ``limit``."""
    if profile_path is None:
        raise CalibrationError(
            f"`{figure.param}` needs each exit's {figure.name} as the device measured it: "
            "pass a `profile` from `edgeexit profile` on the device"
        )
    profile = CostProfile.load(profile_path)
    values = figure.per_exit(profile, manifest.num_exits)
    if values is None:
        raise CalibrationError(
            f"profile {profile_path} has no {figure.name} per segment (written before it "
            "was measured, or by a device whose OS does not report it): profile it again"
        )
    fits = np.flatnonzero(values <= limit)
    if not fits.size:
        raise CalibrationError(
            f"exit 0 alone takes {values[0]:.3g} {figure.unit} ({figure.name}); the "
            f"`{figure.param}` budget is {limit:g} {figure.unit}"
        )
    cap = int(fits[-1])
    return cap, (
        f"its {figure.name} is {values[cap]:.3g} {figure.unit}, within the `{figure.param}` "
        f"budget of {limit:g} {figure.unit}, as profiled"
    )
