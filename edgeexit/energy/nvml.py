"""NVIDIA GPUs through NVML (the nvidia-ml-py package): the board's total-energy counter in mJ
since the driver loaded (Volta and newer). The counter only moves every 20-100 ms, so a
window must span many inference calls; ``min_window_s`` tells the profiler how long."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from edgeexit.energy.common import EnergyMeter, EnergyReading, SensorUnavailable
from edgeexit.errors import EnergyMeterError


class NvmlMeter(EnergyMeter):
    """GPU board energy, summed over ``device_indices``. GPU only: not the host CPU."""

    source = "nvml"
    measured = True
    min_window_s = 0.5  # several counter updates, so one update's jitter stays small

    def __init__(self, device_indices: Sequence[int] = (0,)) -> None:
        pynvml = _pynvml()
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as err:
            raise SensorUnavailable(f"NVML cannot start: {err}") from err
        missing = [i for i in device_indices if i >= count]
        if missing:
            raise SensorUnavailable(f"no GPU {missing[0]}: NVML sees {count} GPU(s)")
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in device_indices]
        self._start_mj = self._read_mj()  # probes that the counter is supported

    def begin_window(self) -> None:
        self._start_s = time.perf_counter()
        self._start_mj = self._read_mj()

    def end_window(self) -> EnergyReading:
        end_mj = self._read_mj()
        duration_s = time.perf_counter() - self._start_s
        energy_mj = sum(end - start for start, end in zip(self._start_mj, end_mj))
        return EnergyReading(float(energy_mj), self.provenance, duration_s)

    def _read_mj(self) -> list[int]:
        pynvml = _pynvml()
        try:
            return [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        except pynvml.NVMLError_NotSupported as err:
            raise SensorUnavailable(
                "this GPU has no total-energy counter (NVML needs Volta or newer)"
            ) from err
        except pynvml.NVMLError as err:
            raise EnergyMeterError(f"NVML energy read failed: {err}") from err


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError as err:
        raise SensorUnavailable(
            "nvidia-ml-py is not installed (pip install 'edgeexit[nvml]')"
        ) from err
    return pynvml
