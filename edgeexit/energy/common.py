"""The energy-meter interface (laid out as in Zeus): a measurement window is opened with
``begin_window`` and closed with ``end_window``, which returns a reading that names its
source. A meter that cannot measure says so; it never reports zero."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from edgeexit.energy.provenance import MODELED, NONE, EnergySource, modeled_energy_mj
from edgeexit.errors import EdgeExitError


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one window, and where it comes from."""

    energy_mj: float | None
    source: EnergySource
    duration_s: float

    @property
    def measured(self) -> bool:
        return self.source.measured and self.energy_mj is not None

    @property
    def label(self) -> str:
        """How a figure is shown: a modeled figure is never shown as measured."""
        return NONE.label if self.energy_mj is None else self.source.label


class EnergyMeter(ABC):
    """One energy source. ``source`` names it; ``measured`` says whether it is a sensor."""

    source: str = "none"
    measured: bool = False
    # Shortest window the sensor resolves; the profiler repeats calls until a window is this
    # long (NVML's counter, for one, only moves every 20-100 ms).
    min_window_s: float = 0.0
    # False for meters with no sensor (the power model, none): their energy is a function of
    # the wall time alone (``energy_mj_for``), so a caller that already times its work (the
    # runtime, per call) needs no window. A window costs ~1.5 µs, ~1% of a 0.2 ms call.
    needs_window: bool = True
    # For those meters: the constant power their energy is modeled from (energy = power ×
    # time, which a caller may compute inline), or None when there is no figure at all.
    modeled_power_w: float | None = None

    @property
    def provenance(self) -> EnergySource:
        """What this meter's figures are: measured by its sensor, modeled, or none."""
        if self.measured:
            return EnergySource.measured_by(self.source)
        return MODELED if self.modeled_power_w is not None else NONE

    @abstractmethod
    def begin_window(self) -> None: ...

    @abstractmethod
    def end_window(self) -> EnergyReading: ...

    def energy_mj_for(self, duration_s: float) -> float | None:
        """The energy of ``duration_s`` of wall time, for meters with ``needs_window`` False."""
        if self.needs_window:
            raise NotImplementedError(f"{type(self).__name__} reads a sensor: open a window")
        power_w = self.modeled_power_w
        return None if power_w is None else modeled_energy_mj(power_w, duration_s * 1e3)


class NoMeter(EnergyMeter):
    """The stand-in when neither a sensor nor a power model exists."""

    needs_window = False

    def begin_window(self) -> None:
        self._start = time.perf_counter()

    def end_window(self) -> EnergyReading:
        return EnergyReading(None, NONE, time.perf_counter() - self._start)


class ModeledMeter(EnergyMeter):
    """Energy = the target's active power × wall time. Labeled 'modeled', never measured."""

    source = "modeled"
    measured = False
    needs_window = False

    def __init__(self, active_power_w: float) -> None:
        self.active_power_w = active_power_w
        self.modeled_power_w = active_power_w

    def begin_window(self) -> None:
        self._start = time.perf_counter()

    def end_window(self) -> EnergyReading:
        duration_s = time.perf_counter() - self._start
        return EnergyReading(self.energy_mj_for(duration_s), MODELED, duration_s)


class SensorUnavailable(EdgeExitError):
    """A backend's sensor is absent on this machine (the probe's answer, not a failure)."""


class SampledPowerMeter(EnergyMeter):
    """A meter for sensors that report power, not energy: a thread samples ``power_w()``
    every ``interval_s`` and the window's energy is the trapezoid integral of the samples.

    Subclasses implement ``power_w``. A sample that fails ends sampling; ``end_window``
    then raises the error, so a half-read window never becomes a figure.
    """

    measured = True

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.min_window_s = 10 * interval_s  # below ~10 samples the integral is noise
        self._samples: list[tuple[float, float]] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def power_w(self) -> float: ...

    def begin_window(self) -> None:
        self._samples = [(time.perf_counter(), self.power_w())]
        self._error = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name=f"{self.source}-sampler")
        self._thread.daemon = True
        self._thread.start()

    def end_window(self) -> EnergyReading:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        self._samples.append((time.perf_counter(), self.power_w()))
        energy_j = sum(
            (t1 - t0) * (p0 + p1) / 2
            for (t0, p0), (t1, p1) in zip(self._samples, self._samples[1:])
        )
        duration_s = self._samples[-1][0] - self._samples[0][0]
        return EnergyReading(energy_j * 1e3, self.provenance, duration_s)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._samples.append((time.perf_counter(), self.power_w()))
            except EdgeExitError as err:  # kept for end_window to raise in the caller's thread
                self._error = err
                return
