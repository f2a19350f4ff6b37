"""The energy-meter interface (laid out as in Zeus): a measurement window is opened with
``begin_window`` and closed with ``end_window``, which returns a reading that names its
source. A meter that cannot measure says so; it never reports zero."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one window. ``measured`` is False for modeled figures and for 'none'."""

    energy_mj: float | None
    source: str  # "rapl", "nvml", "ina3221", "rpi5-pmic", "modeled", or "none"
    measured: bool
    duration_s: float

    @property
    def label(self) -> str:
        """How a figure is shown: a modeled figure is never shown as measured."""
        if self.energy_mj is None:
            return "none"
        return f"measured ({self.source})" if self.measured else "modeled"


class EnergyMeter(ABC):
    """One energy source. ``source`` names it; ``measured`` says whether it is a sensor."""

    source: str = "none"
    measured: bool = False

    @abstractmethod
    def begin_window(self) -> None: ...

    @abstractmethod
    def end_window(self) -> EnergyReading: ...


class NoMeter(EnergyMeter):
    """The stand-in when neither a sensor nor a power model exists."""

    def begin_window(self) -> None:
        self._start = time.perf_counter()

    def end_window(self) -> EnergyReading:
        return EnergyReading(None, "none", False, time.perf_counter() - self._start)


class ModeledMeter(EnergyMeter):
    """Energy = the target's active power × wall time. Labeled 'modeled', never measured."""

    source = "modeled"
    measured = False

    def __init__(self, active_power_w: float) -> None:
        self.active_power_w = active_power_w

    def begin_window(self) -> None:
        self._start = time.perf_counter()

    def end_window(self) -> EnergyReading:
        duration_s = time.perf_counter() - self._start
        # W × s = J; × 1000 for mJ.
        return EnergyReading(self.active_power_w * duration_s * 1e3, "modeled", False, duration_s)
