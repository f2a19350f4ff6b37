"""Measure a bundle on the device: every segment's latency (median, p95) and energy per call.

``profile_bundle`` runs on the device (ONNX Runtime only); the ``DeviceProfile`` it returns
is saved as JSON and read back on the host by calibration, which plans exits for a device it
is not running on. Segments are timed one at a time on the carries the previous segments
actually produce, after a warm-up, so each figure is one segment's own cost.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgeexit.bundle import BATCH_DIM, InputSpec
from edgeexit.errors import InputError, TargetError
from edgeexit.targets.profile import host_arch

FORMAT = "edgeexit.profile/1"


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
class SegmentProfile:
    index: int
    file: str
    sha256: str
    latency_ms: LatencyStats
    energy_mj: float | None  # per call (one batch); None when nothing measures or models it
    power_w: float | None  # average over the energy window (includes the idle baseline)


@dataclass(frozen=True)
class DeviceProfile:
    """A bundle's measured cost on one device. ``energy_source`` names where the energy
    figures come from (a sensor, ``modeled``, or ``none``); ``energy_measured`` is False for
    modeled figures."""

    target: str
    precision: str
    energy_source: str
    energy_measured: bool
    batch_size: int
    repeats: int
    warmup: int
    providers: tuple[str, ...]
    onnxruntime: str
    platform: str
    segments: tuple[SegmentProfile, ...]

    def exit_latency_ms(self, i: int, stat: str = "median") -> float:
        """Latency of a sample leaving at exit i: segments 0..i, run back to back."""
        return sum(getattr(s.latency_ms, stat) for s in self.segments[: i + 1])

    def exit_energy_mj(self, i: int) -> float | None:
        """Energy of a sample leaving at exit i, or None without energy figures."""
        parts = [s.energy_mj for s in self.segments[: i + 1]]
        return None if any(p is None for p in parts) else float(sum(parts))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "target": self.target,
            "precision": self.precision,
            "energy_source": self.energy_source,
            "energy_measured": self.energy_measured,
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
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, source: str = "<profile>") -> DeviceProfile:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise TargetError(f"{source}: format is {got!r}; expected {FORMAT!r}")
        try:
            segments = tuple(
                SegmentProfile(
                    index=int(s["index"]),
                    file=str(s["file"]),
                    sha256=str(s["sha256"]),
                    latency_ms=LatencyStats(**{k: float(v) for k, v in s["latency_ms"].items()}),
                    energy_mj=_optional_float(s.get("energy_mj")),
                    power_w=_optional_float(s.get("power_w")),
                )
                for s in doc["segments"]
            )
            fields = {k: doc[k] for k in ("target", "precision", "energy_source", "onnxruntime")}
            counts = {k: int(doc[k]) for k in ("batch_size", "repeats", "warmup")}
            return cls(
                **fields,
                **counts,
                energy_measured=bool(doc["energy_measured"]),
                providers=tuple(doc["providers"]),
                platform=str(doc.get("platform", "")),
                segments=segments,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TargetError(f"{source}: missing or malformed key {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceProfile:
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError as err:
            raise TargetError(f"device profile {path} does not exist") from err
        except (OSError, json.JSONDecodeError) as err:
            raise TargetError(f"device profile {path} is not readable JSON: {err}") from err
        return cls.from_json(doc, source=str(path))

    def __rich__(self) -> Any:
        from edgeexit.targets.render import profile_table

        return profile_table(self)


def load_profile(path: str | os.PathLike) -> DeviceProfile:
    return DeviceProfile.load(path)


def profile_bundle(
    bundle_dir: str | os.PathLike,
    target: Any = None,
    *,
    repeats: int = 200,
    warmup: int = 20,
    batch_size: int = 1,
    inputs: tuple[np.ndarray, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DeviceProfile:
    """Time every segment of ``bundle_dir`` on this device as ``target`` configures it.

    Each segment runs ``warmup`` untimed calls, then at least ``repeats`` timed calls (more
    when the energy meter needs a longer window), on a batch of ``batch_size`` samples:
    the first rows of ``inputs`` if given, else deterministic synthetic inputs.
    ``progress(done, total)`` is called as segments advance, in calls.
    """
    import onnxruntime as ort

    from edgeexit.energy import get_meter
    from edgeexit.runtime import Runtime

    for name, value, least in (("repeats", repeats, 1), ("warmup", warmup, 0),
                               ("batch_size", batch_size, 1)):  # fmt: skip
        if not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
    runtime = Runtime(bundle_dir, target=target)
    _warn_if_foreign(runtime.target)
    manifest = runtime.manifest
    meter = get_meter(runtime.target)  # probes are cached: no second probe, no second warning
    feeds = list(inputs) if inputs is not None else synthetic_inputs(manifest.inputs, batch_size)
    feeds = [x[:batch_size] for x in feeds]
    total, done = (warmup + repeats) * manifest.num_exits, 0
    segments, reading_source, measured = [], meter.source, meter.measured
    for i, spec in enumerate(manifest.segments):
        for _ in range(warmup):
            runtime.run_segment(i, feeds)
        done += warmup
        latencies_ms, reading = _timed(runtime, i, feeds, repeats, meter.min_window_s, meter)
        done += repeats
        if progress is not None:
            progress(done, total)
        energy_mj = None if reading.energy_mj is None else reading.energy_mj / len(latencies_ms)
        power_w = (
            None if reading.energy_mj is None else reading.energy_mj / 1e3 / reading.duration_s
        )
        reading_source, measured = reading.source, reading.measured
        segments.append(
            SegmentProfile(i, spec.file, spec.sha256, LatencyStats.of(latencies_ms),
                           energy_mj, power_w)
        )  # fmt: skip
        carry, _, _ = runtime.run_segment(i, feeds)
        feeds = [c.copy() for c in carry]  # run_segment's outputs are reused buffers
    return DeviceProfile(
        target=runtime.target.name,
        precision=str(manifest.extra.get("precision", "fp32")),
        energy_source=reading_source,
        energy_measured=measured,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        providers=tuple(runtime.config.providers),
        onnxruntime=ort.__version__,
        platform=platform.platform(),
        segments=tuple(segments),
    )


def _timed(runtime: Any, i: int, feeds: list, repeats: int, min_window_s: float, meter: Any):
    """Latencies of at least ``repeats`` calls, inside one energy window that lasts at least
    ``min_window_s`` (a slow sensor counter needs many calls to resolve them)."""
    latencies_ms = []
    meter.begin_window()
    start = perf_counter()
    while len(latencies_ms) < repeats or perf_counter() - start < min_window_s:
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


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
