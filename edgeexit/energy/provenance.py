"""Where an energy figure comes from, carried with it from the meter to every report.

Three kinds, and a figure is never shown as another: **measured** by a named sensor (RAPL,
NVML, ...), **modeled** from a target's active power (``modeled_energy_mj``, the one
formula), or **none** when neither exists. Shown as 'measured (rapl)', 'modeled' or
'none'; files keep the words they always had (``label`` and ``from_label``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("measured", "modeled", "none")
_MEASURED = re.compile(r"^measured \((?P<sensor>[^()]+)\)$")


@dataclass(frozen=True)
class EnergySource:
    kind: str  # one of KINDS
    sensor: str | None = None  # the sensor's name, for a measured figure only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"energy kind is {self.kind!r}; expected one of {KINDS}")
        if (self.kind == "measured") != bool(self.sensor):
            raise ValueError("a measured figure names its sensor, and only a measured one")

    @classmethod
    def measured_by(cls, sensor: str) -> EnergySource:
        return cls("measured", sensor)

    @property
    def measured(self) -> bool:
        return self.kind == "measured"

    @property
    def name(self) -> str:
        """The sensor for a measured figure, else the kind: ``Result.energy_source``."""
        return self.sensor if self.sensor else self.kind

    @property
    def label(self) -> str:
        """'measured (rapl)', 'modeled' or 'none'."""
        return f"measured ({self.sensor})" if self.sensor else self.kind

    def __str__(self) -> str:
        return self.label

    @classmethod
    def from_label(cls, label: str) -> EnergySource:
        """The inverse of ``label``, for documents written with it."""
        match = _MEASURED.match(label)
        if match:
            return cls.measured_by(match["sensor"])
        return cls(label)


MODELED = EnergySource("modeled")
NONE = EnergySource("none")


def modeled_from(target: str, power_w: float) -> str:
    """How a modeled figure says where it comes from: the target whose power model gave it
    ('modeled from rpi5's power model (7 W)'), the one that was used, never another."""
    return f"modeled from {target}'s power model ({power_w:g} W)"


def modeled_energy_mj(power_w, latency_ms):
    """Energy modeled from a constant power: W x ms = mJ. Works on floats and arrays."""
    return power_w * latency_ms
