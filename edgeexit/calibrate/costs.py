"""Per-segment cost vectors: what running segment i costs on the device.

A sample that leaves at exit i has run segments 0..i, so its cost is the cumulative sum.
Costs come from a device profile (``edgeexit profile`` on the device) or from segment timings
measured here. Energy is the profile's measured energy where it has one, else modeled from
the target's power model; the figure always carries its source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeexit.bundle import Manifest
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

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "latency_ms": list(self.latency_ms),
            "p95_latency_ms": list(self.p95_latency_ms),
            "energy_mj": None if self.energy_mj is None else list(self.energy_mj),
            "energy_source": self.energy_source,
        }


def load_profile_costs(
    path: str | os.PathLike, manifest: Manifest, *, active_power_w: float = 0.0
) -> SegmentCosts:
    """Segment costs from a device profile (``edgeexit profile -o PROFILE.json``).

    The profile must describe this bundle's segments (same files and sha256). Its energy is
    used where the device measured it (per call, divided by the profile's batch size);
    otherwise energy is modeled from the profile's power model (or ``active_power_w``).
    """
    from edgeexit.targets.profiling import load_profile

    profile = load_profile(path)
    ours = [(s.file, s.sha256) for s in manifest.segments]
    theirs = [(s.file, s.sha256) for s in profile.segments]
    if ours != theirs:
        raise CalibrationError(
            f"profile {path} was measured on another bundle (its segment files or sha256 "
            "differ); profile this bundle with `edgeexit profile`"
        )
    median = tuple(s.latency_ms.median for s in profile.segments)
    p95 = tuple(s.latency_ms.p95 for s in profile.segments)
    energies = [s.energy_mj for s in profile.segments]
    power_w = profile.power_model_w.get("active", 0.0) or active_power_w
    if profile.energy_measured and all(e is not None for e in energies):
        energy_mj = tuple(e / profile.batch_size for e in energies)
        energy_source = f"measured ({profile.energy_source})"
    elif power_w > 0:  # W x ms = mJ
        energy_mj, energy_source = tuple(m * power_w for m in median), "modeled"
    else:
        energy_mj, energy_source = None, "none"
    return SegmentCosts(median, p95, energy_mj, energy_source, f"profile {path}")
