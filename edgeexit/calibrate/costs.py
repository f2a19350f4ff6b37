"""Per-segment cost vectors: what running segment i costs on the device.

A sample that leaves at exit i has run segments 0..i, so its cost is the cumulative sum.
Costs come from a device profile (``edgeexit profile`` on the device) or from segment timings
measured here. Energy is the profile's measured energy where it has one, else modeled from
the target's power model; the figure always carries its source.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import CalibrationError


@dataclass(frozen=True)
class SegmentCosts:
    """Per-segment costs, index i = segment i (backbone block i + exit head i).

    ``energy_mj`` is None when neither a sensor nor a power model gives a figure.
    ``energy_source`` is 'measured (<sensor>)', 'modeled' or 'none'; ``source`` says where
    the latencies came from (a profile path, or 'measured here').
    """

    latency_ms: tuple[float, ...]
    p95_latency_ms: tuple[float, ...]
    energy_mj: tuple[float, ...] | None
    energy_source: str
    source: str

    def __post_init__(self) -> None:
        if len(self.latency_ms) != len(self.p95_latency_ms):
            raise CalibrationError("segment costs: median and p95 latency lengths differ")
        if self.energy_mj is not None and len(self.energy_mj) != len(self.latency_ms):
            raise CalibrationError("segment costs: energy and latency lengths differ")

    @property
    def num_segments(self) -> int:
        return len(self.latency_ms)

    @property
    def cumulative_latency_ms(self) -> np.ndarray:
        """Latency of a sample leaving at exit i: segments 0..i."""
        return np.cumsum(self.latency_ms)

    @property
    def cumulative_p95_latency_ms(self) -> np.ndarray:
        return np.cumsum(self.p95_latency_ms)

    @property
    def cumulative_energy_mj(self) -> np.ndarray | None:
        return None if self.energy_mj is None else np.cumsum(self.energy_mj)

    @classmethod
    def from_timings(
        cls,
        segment_ms: np.ndarray,
        *,
        active_power_w: float = 0.0,
        source: str = "measured here",
    ) -> SegmentCosts:
        """From repeated timings ``segment_ms`` [repeats, segments] in ms per sample.

        Energy is modeled as active power x time (W x ms = mJ) when a power model exists.
        """
        timings = np.asarray(segment_ms, dtype=np.float64)
        if timings.ndim == 1:
            timings = timings[None, :]
        median = np.median(timings, axis=0)
        p95 = np.quantile(timings, 0.95, axis=0)
        energy = None if active_power_w <= 0 else tuple(float(v) for v in median * active_power_w)
        return cls(
            latency_ms=tuple(float(v) for v in median),
            p95_latency_ms=tuple(float(v) for v in p95),
            energy_mj=energy,
            energy_source="modeled" if energy is not None else "none",
            source=source,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "latency_ms": list(self.latency_ms),
            "p95_latency_ms": list(self.p95_latency_ms),
            "energy_mj": None if self.energy_mj is None else list(self.energy_mj),
            "energy_source": self.energy_source,
        }


def load_profile_costs(
    path: str | os.PathLike, num_segments: int, *, active_power_w: float = 0.0
) -> SegmentCosts:
    """Read a device profile JSON written by ``edgeexit profile``.

    Each ``segments[i]`` holds ``latency_ms`` (a number, or ``{"median", "p95"}``) and, where
    the device measured it, ``energy_mj`` (a number or ``{"median"}``). Missing energy is
    modeled from ``active_power_w`` (the target's power model).
    """
    doc = _read_json(Path(path))
    segments = doc.get("segments")
    if not isinstance(segments, list) or len(segments) != num_segments:
        got = len(segments) if isinstance(segments, list) else "no"
        raise CalibrationError(
            f"profile {path} has {got} segments; the bundle has {num_segments}: "
            "profile this bundle with `edgeexit profile`"
        )
    median, p95, energy = [], [], []
    for i, seg in enumerate(segments):
        lat = seg.get("latency_ms") if isinstance(seg, dict) else None
        med = _stat(lat, "median")
        if med is None:
            raise CalibrationError(f"profile {path}: segment {i} has no latency_ms")
        median.append(med)
        p95.append(_stat(lat, "p95") or med)
        energy.append(_stat(seg.get("energy_mj"), "median"))
    source = doc.get("energy_source", "measured")
    if all(e is not None for e in energy):
        label = source if str(source).startswith("measured") else f"measured ({source})"
        energy_mj, energy_source = tuple(energy), label
    elif active_power_w > 0:
        energy_mj = tuple(m * active_power_w for m in median)
        energy_source = "modeled"
    else:
        energy_mj, energy_source = None, "none"
    return SegmentCosts(tuple(median), tuple(p95), energy_mj, energy_source, str(path))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CalibrationError(f"profile {path} does not exist") from err
    except (OSError, json.JSONDecodeError) as err:
        raise CalibrationError(f"profile {path} is not readable JSON: {err}") from err
    if not isinstance(doc, dict):
        raise CalibrationError(f"profile {path} is not a JSON object")
    return doc


def _stat(value: Any, key: str) -> float | None:
    """A profile figure is a number or a dict of statistics; take ``key`` (or the mean)."""
    if isinstance(value, dict):
        value = value.get(key, value.get("mean"))
    if value is None:
        return None
    try:
        figure = float(value)
    except (TypeError, ValueError) as err:
        raise CalibrationError(f"profile figure {value!r} is not a number") from err
    if not figure >= 0:
        raise CalibrationError(f"profile figure {figure} is negative or NaN")
    return figure
