"""NVIDIA Jetson power through the INA3221 rail monitors (sysfs hwmon, JetPack 5 and 6).
Each channel N has ``inN_label`` (rail name), ``inN_input`` (mV) and ``currN_input`` (mA);
power is sampled in a thread and integrated over the window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeexit.energy.common import SampledPowerMeter, SensorUnavailable
from edgeexit.errors import EnergyMeterError

INA3221_ROOT = Path("/sys/bus/i2c/drivers/ina3221")
# VDD_IN is the module's input rail: every other rail is inside it, so when it is monitored
# it alone is the module's power, and adding the others would count them twice.
TOTAL_RAIL = "VDD_IN"


@dataclass(frozen=True)
class Rail:
    name: str
    voltage_path: Path  # mV
    current_path: Path  # mA

    def power_w(self) -> float:
        return _number(self.voltage_path) * _number(self.current_path) / 1e6


class Ina3221Meter(SampledPowerMeter):
    """Module power from VDD_IN when monitored, else the sum of every labeled rail."""

    source = "ina3221"

    def __init__(self, root: Path = INA3221_ROOT, interval_s: float = 0.02) -> None:
        super().__init__(interval_s)
        rails = find_rails(Path(root))
        if not rails:
            raise SensorUnavailable(f"no INA3221 rails under {root}")
        total = [r for r in rails if r.name == TOTAL_RAIL]
        self.rails = total or rails
        self.power_w()  # probes access

    def power_w(self) -> float:
        return sum(rail.power_w() for rail in self.rails)


def find_rails(root: Path) -> list[Rail]:
    """Every connected channel of every INA3221 under ``root``."""
    rails = []
    for label in sorted(root.glob("*/hwmon/hwmon*/in*_label")):
        channel = label.name[len("in") : -len("_label")]
        name = _read(label)
        if name.upper() == "NC":  # channel not connected on this carrier board
            continue
        rails.append(
            Rail(name, label.parent / f"in{channel}_input", label.parent / f"curr{channel}_input")
        )
    return rails


def _number(path: Path) -> float:
    """A rail's reading (mV or mA); a file that holds no number is a sensor error, raised
    in the caller's thread (``SampledPowerMeter``), not a crash of the sampling thread."""
    text = _read(path)
    try:
        return float(text)
    except ValueError as err:
        raise EnergyMeterError(f"{path} holds {text[:40]!r}, not a reading in mV or mA") from err


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError as err:
        raise EnergyMeterError(
            f"cannot read {path}: permission denied; run as root or add a udev rule giving "
            "your user read access to the ina3221 hwmon files"
        ) from err
    except OSError as err:
        raise SensorUnavailable(f"cannot read {path}: {err.strerror or err}") from err
