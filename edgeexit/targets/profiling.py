"""Measure a bundle on the device: what each segment costs, and what leaving at each exit costs.

``profile_bundle`` runs on the device (ONNX Runtime only); the ``DeviceProfile`` it returns
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
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, sleep
from typing import Any

import numpy as np

from edgeexit import files
from edgeexit.bundle import BATCH_DIM, InputSpec
from edgeexit.errors import InputError, TargetError, first_line
from edgeexit.targets.profile import Target, host_arch

FORMAT = "edgeexit.profile/1"
IDLE_WINDOW_S = 0.5  # how long the idle baseline is measured, when a sensor exists


@dataclass(frozen=True)
class LatencyStats:
    """One segment's latency over the timed repetitions, in milliseconds."""

    median: float
    p95: float
    mean: float
    min: float

    @classmethod
    def of(cls, latencies_ms: np.ndarray) -> LatencyStats:
        return cls(
            median=float(np.median(latencies_ms)),
            p95=float(np.percentile(latencies_ms, 95)),
            mean=float(np.mean(latencies_ms)),
            min=float(np.min(latencies_ms)),
        )


@dataclass(frozen=True)
class ExitLatency:
    """Latency of a call whose samples all leave at one exit, in milliseconds.

    ``robust_mean`` is the median over rounds of each round's mean (median of means): it
    estimates the mean a deployed sample pays, while one round hit by a burst of load from
    other processes cannot move it. ``spread`` says how far to trust it: the half-width of
    its 95 % interval, relative to it. ``uncontended`` is the 20th percentile of the round
    means: on a shared machine other processes slow whole stretches of rounds (up to 2x on
    a 2-core VM, for seconds), which moves even a median from run to run, while the fast
    rounds recur at the same speed (within 2 % over 3 s runs): calibration plans with it.
    Both are 0 in profiles written before they existed.
    """

    median: float
    p95: float
    mean: float
    min: float
    robust_mean: float
    spread: float = 0.0
    uncontended: float = 0.0

    @classmethod
    def of(cls, rounds_ms: Sequence[np.ndarray]) -> ExitLatency:
        """From each round's call latencies (a sensor's window may lengthen some rounds)."""
        flat = np.concatenate(rounds_ms)
        means = [float(np.mean(r)) for r in rounds_ms]
        return cls(
            median=float(np.median(flat)),
            p95=float(np.percentile(flat, 95)),
            mean=float(np.mean(flat)),
            min=float(np.min(flat)),
            robust_mean=float(np.median(means)),
            spread=median_spread(means),
            uncontended=float(np.percentile(means, UNCONTENDED_PERCENTILE)),
        )


UNCONTENDED_PERCENTILE = 20


def median_spread(values: Sequence[float]) -> float:
    """Half-width of a distribution-free 95 % interval of the median of ``values`` (order
    statistics n/2 -+ 0.98 sqrt(n)), relative to the median; inf with under 6 values."""
    ranked = np.sort(np.asarray(values, dtype=float))
    n = len(ranked)
    j = int(math.floor(n / 2 - 0.98 * math.sqrt(n)))
    if j < 0 or n < 6:
        return math.inf
    median = float(np.median(ranked))
    return float((ranked[n - 1 - j] - ranked[j]) / 2 / median) if median > 0 else math.inf


@dataclass(frozen=True)
class ExitProfile:
    """The cost of one call (one batch) whose samples all leave at exit ``index``."""

    index: int
    latency_ms: ExitLatency
    energy_mj: float | None  # measured, per call; None without a sensor
    power_w: float | None  # measured average over the windows (includes the idle baseline)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "latency_ms": vars(self.latency_ms),
            "energy_mj": self.energy_mj,
            "power_w": self.power_w,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ExitProfile:
        return cls(
            index=_count(doc["index"], "exit index", 0),
            latency_ms=ExitLatency(**_figures(doc["latency_ms"], ExitLatency)),
            energy_mj=_optional_figure(doc.get("energy_mj"), "energy_mj"),
            power_w=_optional_figure(doc.get("power_w"), "power_w"),
        )


@dataclass(frozen=True)
class SegmentProfile:
    index: int
    file: str
    sha256: str
    latency_ms: LatencyStats
    energy_mj: float | None  # measured, per call (one batch); None without a sensor
    power_w: float | None  # measured average over the window (includes the idle baseline)


@dataclass(frozen=True)
class DeviceProfile:
    """A bundle's measured cost on one device.

    Energy figures are measured ones only: ``energy_source`` names the sensor, or is
    ``none`` when the device has none; then every ``energy_mj`` is None, and a consumer that
    wants a figure models it from ``power_model_w`` (the target's idle/active watts) and
    labels it modeled. A modeled figure never sits where a measured one is expected.
    """

    target: str
    precision: str
    energy_source: str
    energy_measured: bool
    power_model_w: dict[str, float]  # {"idle": W, "active": W} from the target profile
    measured_idle_power_w: float | None  # the sensor with nothing running; None without one
    batch_size: int
    repeats: int
    warmup: int
    providers: tuple[str, ...]
    onnxruntime: str
    platform: str
    segments: tuple[SegmentProfile, ...]
    # Per-exit costs through the runtime. Empty in profiles written before they existed;
    # readers then fall back to summing segments (which leaves out per-call overhead).
    exits: tuple[ExitProfile, ...] = ()

    def exit_latency_ms(self, i: int, stat: str = "median") -> float:
        """Latency of a call leaving at exit i: measured through the runtime when the
        profile has per-exit costs, else segments 0..i summed."""
        if self.exits:
            return getattr(self.exits[i].latency_ms, stat)
        return sum(getattr(s.latency_ms, stat) for s in self.segments[: i + 1])

    def exit_energy_mj(self, i: int) -> float | None:
        """Energy of a call leaving at exit i, or None without energy figures."""
        if self.exits:
            return self.exits[i].energy_mj
        parts = [s.energy_mj for s in self.segments[: i + 1]]
        return None if any(p is None for p in parts) else float(sum(parts))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "target": self.target,
            "precision": self.precision,
            "energy_source": self.energy_source,
            "energy_measured": self.energy_measured,
            "power_model_w": dict(self.power_model_w),
            "measured_idle_power_w": self.measured_idle_power_w,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "providers": list(self.providers),
            "onnxruntime": self.onnxruntime,
            "platform": self.platform,
            "segments": [
                {
                    "index": s.index,
                    "file": s.file,
                    "sha256": s.sha256,
                    "latency_ms": vars(s.latency_ms),
                    "energy_mj": s.energy_mj,
                    "power_w": s.power_w,
                }
                for s in self.segments
            ],
            "exits": [e.to_json() for e in self.exits],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, source: str = "<profile>") -> DeviceProfile:
        """Parse and check a profile document: every latency, energy and power figure must
        be a finite number >= 0 (a NaN would meet any budget), counts positive integers."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise TargetError(f"{source}: format is {got!r}; expected {FORMAT!r}")
        try:
            segments = tuple(
                SegmentProfile(
                    index=_count(s["index"], "segment index", 0),
                    file=_text(s["file"], "segment file"),
                    sha256=_text(s["sha256"], "segment sha256"),
                    latency_ms=LatencyStats(**_figures(s["latency_ms"], LatencyStats)),
                    energy_mj=_optional_figure(s.get("energy_mj"), "energy_mj"),
                    power_w=_optional_figure(s.get("power_w"), "power_w"),
                )
                for s in doc["segments"]
            )
            fields = {
                k: _text(doc[k], k) for k in ("target", "precision", "energy_source", "onnxruntime")
            }
            counts = {
                "batch_size": _count(doc["batch_size"], "batch_size", 1),
                "repeats": _count(doc["repeats"], "repeats", 1),
                "warmup": _count(doc["warmup"], "warmup", 0),
            }
            energy_measured = doc["energy_measured"]
            if not isinstance(energy_measured, bool):
                raise ValueError(f"energy_measured must be true or false, got {energy_measured!r}")
            power = doc.get("power_model_w", {})
            return cls(
                **fields,
                **counts,
                energy_measured=energy_measured,
                power_model_w={str(k): _figure(v, "power_model_w") for k, v in power.items()},
                measured_idle_power_w=_optional_figure(
                    doc.get("measured_idle_power_w"), "measured_idle_power_w"
                ),
                providers=tuple(_text(p, "provider") for p in doc["providers"]),
                platform=str(doc.get("platform", "")),
                segments=segments,
                exits=tuple(ExitProfile.from_json(e) for e in doc.get("exits", ())),
            )
        except KeyError as err:
            raise TargetError(f"{source}: missing key {err}; re-run `edgeexit profile`") from err
        except (TypeError, ValueError, AttributeError) as err:
            raise TargetError(f"{source}: malformed profile: {err}") from err

    def save(self, path: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = ()) -> None:
        """Write the JSON atomically (temp file + rename), as strict JSON. ``path`` must be
        new or an earlier profile, and not one of ``inputs`` (files.check_output)."""
        files.check_output(path, "profile", inputs=inputs)
        files.write_json_atomic(path, self.to_json(), what="profile")

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceProfile:
        path = Path(path)
        try:
            if path.is_dir():
                raise IsADirectoryError(21, "Is a directory", str(path))
            text = path.read_bytes().decode("utf-8")
            doc = json.loads(text, parse_constant=_no_constant)
        except FileNotFoundError as err:
            raise TargetError(f"device profile {path} does not exist") from err
        except OSError as err:
            raise TargetError(
                f"device profile {path} is unreadable: {files.os_reason(err)}"
            ) from err
        except (UnicodeDecodeError, ValueError) as err:
            reason = first_line(err)
            raise TargetError(f"device profile {path} is not readable JSON: {reason}") from err
        return cls.from_json(doc, source=str(path))

    def __rich__(self) -> Any:
        from edgeexit.targets.render import profile_table

        return profile_table(self)


def load_profile(path: str | os.PathLike) -> DeviceProfile:
    return DeviceProfile.load(path)


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
) -> DeviceProfile:
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
    import onnxruntime as ort

    from edgeexit.energy import get_meter
    from edgeexit.runtime import Runtime

    _check_counts(repeats=repeats, warmup=warmup, batch_size=batch_size, rounds=rounds)
    runtime = Runtime(bundle_dir, target=target)
    _warn_if_foreign(runtime.target)
    meter = get_meter(runtime.target)  # probes are cached: no second probe, no second warning
    first = _first_batch(inputs, runtime.manifest.inputs, batch_size)
    feeds = first
    calls = -(-repeats // min(rounds, repeats))  # per exit per round, rounding up
    segment_calls = (warmup + repeats) * runtime.num_exits
    total = segment_calls + (warmup + calls * min(rounds, repeats)) * runtime.num_exits
    segments = []
    for i in range(runtime.num_exits):
        segments.append(_profile_segment(runtime, i, feeds, meter, repeats, warmup))
        if progress is not None:
            progress((i + 1) * (warmup + repeats), total)
        carry, _, _ = runtime.run_segment(i, feeds)
        feeds = [c.copy() for c in carry]  # run_segment's outputs are reused buffers

    def exits_progress(done: int, planned: int) -> None:
        if progress is not None:  # the exits' plan grows while their costs still scatter
            progress(segment_calls + done, segment_calls + planned)

    exits = measure_exit_costs(
        runtime,
        [tuple(first)],
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
    target_ = runtime.target
    return DeviceProfile(
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
        exits=exits,
    )


def forced_exit(num_exits: int, i: int) -> tuple[float, ...]:
    """Thresholds sending every sample out at exit i: inf before it (nobody leaves), -inf
    from it on (everybody leaves at the first of those, i)."""
    return (math.inf,) * i + (-math.inf,) * (num_exits - i)


def measure_exit_costs(
    runtime: Any,
    batches: Sequence[Any],
    *,
    rounds: int = 10,
    calls: int = 20,
    warmup: int = 20,
    meter: Any = None,
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

    ``until_spread``: on a noisy machine, keep adding pairs of rounds (up to ``max_rounds``
    in all) while any exit's ``spread`` is wider than this fraction: more calls where the
    spread is wide, so that the same command gives the same costs. ``min_seconds``: measure
    at least this long, so that the rounds span the stretches a shared machine goes through
    (see ``ExitLatency.uncontended``). Past ``rounds``, nothing runs beyond ``max_seconds``.
    """
    _check_counts(rounds=rounds, calls=calls, warmup=warmup, batches=len(batches))
    n_exits = runtime.num_exits
    forced = [forced_exit(n_exits, i) for i in range(n_exits)]
    for k in range(warmup):
        for thresholds in forced:
            runtime.run(batches[k % len(batches)], thresholds=thresholds)
    measures = meter is not None and meter.measured
    latency = [[] for _ in range(n_exits)]
    means = [[] for _ in range(n_exits)]  # each block's mean, kept as measured: the checks
    energy = [[] for _ in range(n_exits)]  # below would otherwise recompute them every round
    total, done, cursor = n_exits * (warmup + rounds * calls), n_exits * warmup, 0
    most = max(rounds, max_rounds or rounds)
    started, r = perf_counter(), 0

    def settled() -> bool:
        elapsed = perf_counter() - started
        if r < rounds:
            return False
        if elapsed > max_seconds:
            return True
        if r % 2 == 1:
            return False  # whole pairs of rounds keep the exits' order balanced
        if elapsed < min_seconds:
            return False
        if until_spread is None or r >= most:
            return True
        return max(median_spread(m) for m in means) <= until_spread

    while not settled():
        for i in range(n_exits) if r % 2 == 0 else reversed(range(n_exits)):
            block, reading = _exit_block(
                runtime, batches, cursor, calls, forced[i], meter, between_calls
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
        ExitProfile(i, ExitLatency.of(latency[i]), *_energy_of(energy[i], r))
        for i in range(n_exits)
    )


def _exit_block(
    runtime: Any,
    batches: Sequence[Any],
    cursor: int,
    calls: int,
    thresholds: tuple[float, ...],
    meter: Any,
    between_calls: Callable[[], None] | None,
) -> tuple[np.ndarray, Any]:
    """``calls`` timed calls (more if the meter's window needs them) and the window's
    reading (None without a meter)."""
    min_window_s = meter.min_window_s if meter is not None and meter.measured else 0.0
    latencies_ms = []
    if meter is not None:
        meter.begin_window()
    start = perf_counter()
    while len(latencies_ms) < calls or perf_counter() - start < min_window_s:
        batch = batches[(cursor + len(latencies_ms)) % len(batches)]
        latencies_ms.append(runtime.run(batch, thresholds=thresholds).latency_ms)
        if between_calls is not None:
            between_calls()
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
    runtime: Any, i: int, feeds: list[np.ndarray], meter: Any, repeats: int, warmup: int
) -> SegmentProfile:
    for _ in range(warmup):
        runtime.run_segment(i, feeds)
    latencies_ms, reading = _timed(runtime, i, feeds, repeats, meter)
    energy_mj, power_w = _measured_per_call(reading, len(latencies_ms))
    spec = runtime.manifest.segments[i]
    return SegmentProfile(
        i, spec.file, spec.sha256, LatencyStats.of(latencies_ms), energy_mj, power_w
    )


def _idle_power_w(meter: Any) -> float | None:
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
            f"the data holds {len(inputs[0])} samples; expected at least --batch-size {batch_size}"
        )
    return [x[:batch_size] for x in inputs]


def _timed(runtime: Any, i: int, feeds: list, repeats: int, meter: Any):
    """Latencies of at least ``repeats`` calls, inside one energy window that lasts at least
    the meter's ``min_window_s`` (a slow sensor counter needs many calls to resolve)."""
    latencies_ms = []
    meter.begin_window()
    start = perf_counter()
    while len(latencies_ms) < repeats or perf_counter() - start < meter.min_window_s:
        t0 = perf_counter()
        runtime.run_segment(i, feeds)
        latencies_ms.append((perf_counter() - t0) * 1e3)
    return np.asarray(latencies_ms), meter.end_window()


def synthetic_inputs(specs: tuple[InputSpec, ...], batch_size: int) -> list[np.ndarray]:
    """Deterministic inputs of the declared shapes: standard normal floats; ones for
    integers (valid token ids and attention masks alike); True for booleans."""
    rng = np.random.default_rng(0)
    arrays = []
    for spec in specs:
        if any(isinstance(d, str) and d != BATCH_DIM for d in spec.shape):
            raise InputError(
                f"input {spec.name!r} has symbolic axes {spec.shape}; pass real inputs "
                "(--data DATA.npz) to profile it"
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


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _figure(value: Any, what: str) -> float:
    """A measured figure: a finite number >= 0 (never NaN, inf, negative, bool or text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} is {value!r}; expected a finite number >= 0")
    return float(value)


def _optional_figure(value: Any, what: str) -> float | None:
    return None if value is None else _figure(value, what)


def _figures(doc: Any, cls: type) -> dict[str, float]:
    if not isinstance(doc, dict):
        raise ValueError(f"latency_ms must be an object, got {doc!r}")
    fields = cls.__dataclass_fields__
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    missing = [n for n in required if n not in doc]
    if missing:
        raise ValueError(f"latency_ms has no {missing[0]!r}")
    return {n: _figure(doc[n], f"latency_ms.{n}") for n in fields if n in doc}


def _count(value: Any, what: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value
