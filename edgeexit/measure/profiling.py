"""Measure a bundle on the device: what each segment costs, and what leaving at each exit costs.

``profile_bundle`` runs on the device (ONNX Runtime only); the ``CostProfile`` it returns
is saved as JSON and read back on the host by calibration, which plans exits for a device it
is not running on. Two views are recorded:

- ``segments``: each segment timed alone (``Runtime.run_segment``) on the carries the
  previous segments actually produce: one segment's own cost, for reading a profile;
- ``exits``: what a sample leaving at exit i pays through the real runtime
  (``Runtime.run`` at the profile's batch size with thresholds forcing every sample out at
  i), per-call orchestration included. Calibration predicts from these
  (``measure_exit_costs``, which calibrating without a profile calls too).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from time import perf_counter, sleep
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeexit.bundle import BATCH_DIM, InputSpec, load_graphs
from edgeexit.energy import EnergyMeter, get_meter
from edgeexit.errors import InputError
from edgeexit.measure.cost_profile import (
    CostProfile,
    ExitLatency,
    ExitProfile,
    LatencyStats,
    SegmentProfile,
)
from edgeexit.measure.memory import segment_resident_mb
from edgeexit.measure.rounds import Schedule, round_order
from edgeexit.runtime import Runtime
from edgeexit.runtime.session import open_session
from edgeexit.targets.spec import Target, host_arch

IDLE_WINDOW_S = 0.5  # how long the idle baseline is measured, when a sensor exists


def profile_bundle(
    bundle_dir: str | os.PathLike,
    target: str | os.PathLike | Target | None = None,
    *,
    repeats: int = 200,
    warmup: int = 20,
    batch_size: int = 1,
    rounds: int = 10,
    inputs: tuple[np.ndarray, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
    until_spread: float | None = 0.03,
    min_seconds: float = 2.0,
) -> CostProfile:
    """Time every segment, and every exit through the runtime, of ``bundle_dir`` on this
    device as ``target`` configures it.

    Each segment runs ``warmup`` untimed calls, then at least ``repeats`` timed calls (more
    when the energy meter needs a longer window), on a batch of ``batch_size`` samples:
    the first rows of ``inputs`` if given, else deterministic synthetic inputs. Each exit
    then gets ``warmup`` untimed and ``repeats`` timed ``Runtime.run`` calls on that batch,
    spread over ``rounds`` interleaved rounds (see ``measure_exit_costs``), for at least
    ``min_seconds``, and more rounds (up to 10 s) while an exit's cost is not known within
    ``until_spread``.
    ``progress(done, total)`` is called as segments and exits advance, in calls.
    """
    _check_counts(repeats=repeats, warmup=warmup, batch_size=batch_size, rounds=rounds)
    runtime = Runtime(bundle_dir, target=target, bodies=False)  # every head, timed
    resident = segment_resident_mb(bundle_dir, runtime.manifest, runtime.config)
    _warn_if_foreign(runtime.target)
    meter = get_meter(runtime.target)  # probes are cached: no second probe, no second warning
    first = _first_batch(inputs, runtime.manifest.inputs, batch_size)
    calls = -(-repeats // min(rounds, repeats))  # per exit per round, rounding up
    segment_calls = (warmup + repeats) * runtime.num_exits
    total = segment_calls + (warmup + calls * min(rounds, repeats)) * (runtime.num_exits + 1)
    segments, segment_feeds = [], segment_inputs(runtime, first)
    for i, feeds in enumerate(segment_feeds):
        segment = _profile_segment(runtime, i, feeds, meter, repeats, warmup)
        segments.append(dataclasses.replace(segment, resident_mb=resident[i]))
        if progress is not None:
            progress((i + 1) * (warmup + repeats), total)

    def exits_progress(done: int, planned: int) -> None:
        if progress is not None:  # the exits' plan grows while their costs still scatter
            progress(segment_calls + done, segment_calls + planned)

    full = Runtime(bundle_dir, target=target, thresholds=(math.inf,) * runtime.num_exits)
    *exits, full_cost = measure_exit_costs(
        runtime,
        [tuple(first)],
        full=full,
        rounds=min(rounds, repeats),
        calls=calls,
        warmup=warmup,
        meter=meter,
        progress=exits_progress,
        until_spread=until_spread,
        max_rounds=8 * min(rounds, repeats),
        max_seconds=10.0,
        min_seconds=min_seconds,
    )
    heads = measure_head_costs(runtime, segment_feeds)
    segments = [dataclasses.replace(s, head_ms=h) for s, h in zip(segments, heads)]
    target_ = runtime.target
    return CostProfile(
        target=target_.name,
        precision=str(runtime.manifest.extra.get("precision", "fp32")),
        energy_source=meter.source if meter.measured else "none",
        energy_measured=meter.measured,
        power_model_w={"idle": target_.idle_power_w, "active": target_.active_power_w},
        measured_idle_power_w=_idle_power_w(meter),
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        providers=tuple(runtime.config.providers),
        onnxruntime=ort.__version__,
        platform=platform.platform(),
        segments=tuple(segments),
        exits=tuple(exits),
        full=full_cost,
    )


def segment_inputs(runtime: Runtime, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """What each segment takes when the chain runs ``inputs`` (copies, one list each)."""
    feeds, found = [np.asarray(x) for x in inputs], []
    for i in range(runtime.num_exits):
        found.append(feeds)
        carry, _, _ = runtime.run_segment(i, feeds)
        feeds = [c.copy() for c in carry]  # run_segment's outputs are reused buffers
    return found


def measure_head_costs(
    runtime: Runtime,
    feeds: Sequence[Sequence[np.ndarray]],
    *,
    rounds: int = 30,
    calls: int = 5,
) -> tuple[float | None, ...]:
    """What each exit's head adds to its segment, ms per call at the batch of ``feeds``
    (one input list per segment): the segment with its head against its body, alternating
    round by round, plain session calls on the same inputs (their overheads cancel). None
    for a segment without a body (the last; bundles exported without). ``runtime`` must run
    every head (``Runtime(..., bodies=False)``): its sessions are the segments with heads.
    """
    if runtime.bodies_in_use:
        raise ValueError("measure_head_costs needs a Runtime opened with bodies=False")
    found: list[float | None] = []
    for spec, fused, inputs in zip(runtime.manifest.segments, runtime.sessions, feeds):
        if spec.body is None:
            found.append(None)
            continue
        (source,) = load_graphs(runtime.bundle_dir, [spec.headless])
        body = open_session(source, runtime.config)
        named = dict(zip(spec.inputs, inputs))
        ways = {"head": fused, "body": body}
        times: dict[str, list[float]] = {"head": [], "body": []}
        for r in range(rounds):
            for name in round_order(list(ways), r):
                session = ways[name]
                start = perf_counter()
                for _ in range(calls):
                    session.run(None, named)
                times[name].append((perf_counter() - start) / calls * 1e3)
        found.append(max(float(np.median(times["head"]) - np.median(times["body"])), 0.0))
    return tuple(found)


def forced_exit(num_exits: int, i: int) -> tuple[float, ...]:
    """Thresholds sending every sample out at exit i: inf before it (nobody leaves), -inf
    from it on (everybody leaves at the first of those, i)."""
    return (math.inf,) * i + (-math.inf,) * (num_exits - i)


def measure_exit_costs(
    runtime: Runtime,
    batches: Sequence[Any],
    *,
    full: Runtime | None = None,
    rounds: int = 10,
    calls: int = 20,
    warmup: int = 20,
    meter: EnergyMeter | None = None,
    progress: Callable[[int, int], None] | None = None,
    between_calls: Callable[[], None] | None = None,
    until_spread: float | None = None,
    max_rounds: int | None = None,
    max_seconds: float = 20.0,
    min_seconds: float = 0.0,
) -> tuple[ExitProfile, ...]:
    """What a call whose samples all leave at exit i costs through ``runtime.run``, per exit.

    This is what a deployed sample leaving at i pays, the runtime's per-call orchestration
    included, so calibration predicts from it, whether from a profile or measuring here.
    ``batches`` (runtime inputs, e.g. one sample each) are cycled through. Every exit first
    gets ``warmup`` untimed calls (the first calls allocate buffers and settle ONNX
    Runtime); then in each of ``rounds`` rounds every exit gets a block of ``calls`` timed
    calls, the exits' order alternating round by round so that drift on a busy machine hits
    them alike. Latency is the call's wall time as the runtime reports it (what ``bench``
    averages). With a measuring ``meter``, each block is one energy window, lengthened to
    the meter's ``min_window_s``, and energy per call is the median over rounds.
    ``progress(done, total)`` is called after each block, in planned calls.
    ``between_calls()``, if given, runs after every timed call, untimed: a benchmark runs
    deployed calls there so that costs and deployment see the same machine (with a meter,
    its work would fall inside the energy windows: pass one or the other).

    ``full``: the bundle opened with every early exit disabled (``Runtime(...,
    thresholds=(inf,) * n)``): its calls are timed in the same rounds, and its figure comes
    last, index ``num_exits`` (the full model as deployed: the speed-ups' reference).
    ``until_spread``: on a noisy machine, keep adding pairs of rounds (up to ``max_rounds``
    in all) while any exit's ``spread`` is wider than this fraction: more calls where the
    spread is wide, so that the same command gives the same costs. ``min_seconds``: measure
    at least this long, so that the rounds span the stretches a shared machine goes through
    (see ``ExitLatency.uncontended``). Past ``rounds``, nothing runs beyond ``max_seconds``.
    """
    _check_counts(rounds=rounds, calls=calls, warmup=warmup, batches=len(batches))
    n_exits = runtime.num_exits
    # (runtime, thresholds) per configuration timed: each exit forced, then the full model
    # as deployed (its own runtime, every early exit disabled: the manifest's thresholds).
    configs = [(runtime, forced_exit(n_exits, i)) for i in range(n_exits)]
    if full is not None:
        configs.append((full, None))
    n = len(configs)
    schedule = Schedule(rounds, max_rounds, min_seconds, max_seconds, until_spread)
    for k in range(warmup):
        for rt, thresholds in configs:
            rt.run(batches[k % len(batches)], thresholds=thresholds)
    measures = meter is not None and meter.measured
    latency = [[] for _ in range(n)]
    means = [[] for _ in range(n)]  # each block's mean, kept as measured: the checks
    energy = [[] for _ in range(n)]  # below would otherwise recompute them every round
    total, done, cursor = n * (warmup + rounds * calls), n * warmup, 0
    started, r = perf_counter(), 0
    while not schedule.done(r, perf_counter() - started, means):
        for i in round_order(range(n), r):
            block, reading = _exit_block(
                *configs[i][:1], batches, cursor, calls, configs[i][1], meter, between_calls
            )
            cursor += len(block)
            latency[i].append(block)
            means[i].append(float(np.mean(block)))
            if measures and reading.measured and reading.energy_mj is not None:
                power_w = reading.energy_mj / 1e3 / reading.duration_s
                energy[i].append((reading.energy_mj / len(block), power_w))
            done += calls
            total = max(total, done)
            if progress is not None:
                progress(done, total)
        r += 1
    return tuple(
        ExitProfile(i, ExitLatency.of(latency[i]), *_energy_of(energy[i], r)) for i in range(n)
    )


def _exit_block(
    runtime: Runtime,
    batches: Sequence[Any],
    cursor: int,
    calls: int,
    thresholds: tuple[float, ...] | None,
    meter: EnergyMeter | None,
    between_calls: Callable[[], None] | None,
) -> tuple[np.ndarray, Any]:
    """``calls`` timed runtime calls forced out at one exit, as the runtime times them."""

    def call(k: int) -> float:
        batch = batches[(cursor + k) % len(batches)]
        latency_ms = runtime.run(batch, thresholds=thresholds).latency_ms
        if between_calls is not None:
            between_calls()
        return latency_ms

    return _window_of_calls(call, calls, meter)


def _window_of_calls(
    call: Callable[[int], float], calls: int, meter: EnergyMeter | None
) -> tuple[np.ndarray, Any]:
    """Latencies (ms) of at least ``calls`` calls of ``call(k)``, inside one energy window
    that lasts at least a measuring meter's ``min_window_s`` (a slow sensor counter needs
    many calls to resolve), and the window's reading (None without a meter)."""
    min_window_s = meter.min_window_s if meter is not None and meter.measured else 0.0
    latencies_ms: list[float] = []
    if meter is not None:
        meter.begin_window()
    start = perf_counter()
    while len(latencies_ms) < calls or perf_counter() - start < min_window_s:
        latencies_ms.append(call(len(latencies_ms)))
    reading = meter.end_window() if meter is not None else None
    return np.asarray(latencies_ms), reading


def _energy_of(
    per_call: list[tuple[float, float]], rounds: int
) -> tuple[float | None, float | None]:
    """(mJ per call, W), each the median over the rounds' windows; (None, None) unless
    every round was measured."""
    if len(per_call) < rounds:
        return None, None
    return float(np.median([e for e, _ in per_call])), float(np.median([w for _, w in per_call]))


def _profile_segment(
    runtime: Runtime, i: int, feeds: list[np.ndarray], meter: EnergyMeter, repeats: int, warmup: int
) -> SegmentProfile:
    for _ in range(warmup):
        runtime.run_segment(i, feeds)

    def call(_: int) -> float:
        t0 = perf_counter()
        runtime.run_segment(i, feeds)
        return (perf_counter() - t0) * 1e3

    latencies_ms, reading = _window_of_calls(call, repeats, meter)
    energy_mj, power_w = _measured_per_call(reading, len(latencies_ms))
    spec = runtime.manifest.segments[i]
    return SegmentProfile(
        i, spec.file, spec.sha256, LatencyStats.of(latencies_ms), energy_mj, power_w
    )


def _idle_power_w(meter: EnergyMeter) -> float | None:
    """The sensor's reading with nothing running: the baseline inside every measured W."""
    if not meter.measured:
        return None
    meter.begin_window()
    sleep(max(meter.min_window_s, IDLE_WINDOW_S))
    reading = meter.end_window()
    return None if reading.energy_mj is None else reading.energy_mj / 1e3 / reading.duration_s


def _check_counts(**counts: int) -> None:
    least = {"warmup": 0}
    for name, value in counts.items():
        if not isinstance(value, int) or value < least.get(name, 1):
            raise InputError(f"{name} must be an integer >= {least.get(name, 1)}, got {value!r}")


def _first_batch(
    inputs: tuple[np.ndarray, ...] | None, specs: tuple[InputSpec, ...], batch_size: int
) -> list[np.ndarray]:
    if inputs is None:
        return synthetic_inputs(specs, batch_size)
    if len(inputs[0]) < batch_size:
        raise InputError(
            f"the data holds {len(inputs[0])} samples; expected at least `batch_size` {batch_size}"
        )
    return [x[:batch_size] for x in inputs]


def synthetic_inputs(specs: tuple[InputSpec, ...], batch_size: int) -> list[np.ndarray]:
    """Deterministic inputs of the declared shapes: standard normal floats; ones for
    integers (valid token ids and attention masks alike); True for booleans."""
    rng = np.random.default_rng(0)
    arrays = []
    for spec in specs:
        if any(isinstance(d, str) and d != BATCH_DIM for d in spec.shape):
            raise InputError(
                f"input {spec.name!r} has symbolic axes {spec.shape}; pass real inputs "
                "(`data`, a .npz) to profile it"
            )
        shape = tuple(batch_size if d == BATCH_DIM else d for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(np.ones(shape, dtype=dtype))
    return arrays


def _warn_if_foreign(target: Any) -> None:
    if target.arch != host_arch():
        logging.getLogger("edgeexit.targets").warning(
            "profiling for %s (%s) on a %s host: the figures describe this host, not the "
            "device; run `edgeexit profile` on the device itself",
            target.name,
            target.arch,
            host_arch(),
        )


def _measured_per_call(reading: Any, calls: int) -> tuple[float | None, float | None]:
    """(mJ per call, average W) from a sensor's reading; (None, None) for a modeled one."""
    if not reading.measured or reading.energy_mj is None:
        return None, None
    return reading.energy_mj / calls, reading.energy_mj / 1e3 / reading.duration_s
