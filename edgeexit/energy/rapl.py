"""Intel/AMD RAPL through Linux powercap: each CPU package's ``energy_uj`` counter, read at
the start and end of a window. The counter wraps at ``max_energy_range_uj``; since Linux 5.10
(CVE-2020-8694, "Platypus") only root may read it."""

from __future__ import annotations

import re
import time
from pathlib import Path

from edgeexit.energy.common import EnergyMeter, EnergyReading, SensorUnavailable
from edgeexit.errors import EnergyMeterError

POWERCAP_ROOT = Path("/sys/class/powercap")
# Top-level zones are whole packages (intel-rapl:0); sub-zones (intel-rapl:0:0, cores or
# dram) are already inside their package, so summing them would count energy twice.
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


class RaplMeter(EnergyMeter):
    """CPU package energy, summed over packages, in mJ."""

    source = "rapl"
    measured = True
    min_window_s = 0.01  # the counter updates about every millisecond

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self.zones = [
            p
            for p in sorted(Path(root).glob("intel-rapl:*"))
            if _PACKAGE_ZONE.match(p.name) and _is_package(p)
        ]
        if not self.zones:
            raise SensorUnavailable(f"no RAPL package zones under {root}")
        self.max_range_uj = [int(_read(z / "max_energy_range_uj")) for z in self.zones]
        self._start_uj = [int(_read(z / "energy_uj")) for z in self.zones]  # probes access

    def begin_window(self) -> None:
        self._start_s = time.perf_counter()
        self._start_uj = [int(_read(z / "energy_uj")) for z in self.zones]

    def end_window(self) -> EnergyReading:
        end_uj = [int(_read(z / "energy_uj")) for z in self.zones]
        duration_s = time.perf_counter() - self._start_s
        total_uj = sum(
            delta_uj(start, end, max_range)
            for start, end, max_range in zip(self._start_uj, end_uj, self.max_range_uj)
        )
        return EnergyReading(total_uj / 1e3, self.provenance, duration_s)


def delta_uj(start_uj: int, end_uj: int, max_range_uj: int) -> int:
    """Energy between two counter reads, across at most one wrap-around of the counter."""
    if end_uj >= start_uj:
        return end_uj - start_uj
    return max_range_uj - start_uj + end_uj


def _is_package(zone: Path) -> bool:
    # Laptops add a top-level "psys" zone (the whole platform), which already contains the
    # packages; only "package-N" zones are summed.
    name = zone / "name"
    return not name.is_file() or _read(name).startswith("package")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError as err:
        raise EnergyMeterError(
            f"cannot read {path}: permission denied. Since Linux 5.10 only root can read RAPL "
            f"energy; run as root, or grant read access: sudo chmod a+r {path.parent}/energy_uj"
        ) from err
    except OSError as err:
        raise SensorUnavailable(f"cannot read {path}: {err.strerror or err}") from err
