"""Raspberry Pi 5 power through its PMIC ADC: ``vcgencmd pmic_read_adc`` prints each rail's
current (``NAME_A current(i)=0.123A``) and voltage (``NAME_V volt(j)=0.88V``). Power is the
sum of current × voltage over the rails that report both, sampled in a thread.

The PMIC rails exclude the 5 V input's own consumers (USB, Ethernet) and regulator losses,
so this reads below wall power; the figure is labeled ``rpi5-pmic`` for that reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

from edgeexit.energy.common import SampledPowerMeter, SensorUnavailable
from edgeexit.errors import EnergyMeterError

COMMAND = ("vcgencmd", "pmic_read_adc")
_LINE = re.compile(r"^\s*(?P<rail>\S+)_(?P<unit>[AV])\s+\w+\(\d+\)=(?P<value>[-\d.eE+]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> dict[str, float]:
    """Power in watts per rail that reports both current and voltage."""
    current_a: dict[str, float] = {}
    voltage_v: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            table = current_a if match["unit"] == "A" else voltage_v
            table[match["rail"]] = float(match["value"])
    return {rail: current_a[rail] * voltage_v[rail] for rail in current_a if rail in voltage_v}


def run_vcgencmd() -> str:
    """One reading from the firmware (about 10 ms on a Pi 5)."""
    try:
        done = subprocess.run(COMMAND, capture_output=True, text=True, timeout=5, check=True)
    except FileNotFoundError as err:
        raise SensorUnavailable("vcgencmd is not installed (not a Raspberry Pi?)") from err
    except subprocess.CalledProcessError as err:
        if "permission" in (err.stderr or "").lower():
            raise EnergyMeterError(
                "vcgencmd pmic_read_adc: permission denied on /dev/vcio; add your user to "
                "the 'video' group (sudo usermod -aG video $USER) and log in again"
            ) from err
        raise SensorUnavailable(f"vcgencmd pmic_read_adc failed: {err.stderr.strip()}") from err
    except subprocess.TimeoutExpired as err:
        raise EnergyMeterError("vcgencmd pmic_read_adc did not answer within 5 s") from err
    return done.stdout


class RpiPmicMeter(SampledPowerMeter):
    """Pi 5 board power from the PMIC rails. ``read_adc`` is injectable for tests."""

    source = "rpi5-pmic"

    def __init__(self, read_adc: Callable[[], str] | None = None, interval_s: float = 0.1) -> None:
        super().__init__(interval_s)
        if read_adc is None and shutil.which(COMMAND[0]) is None:
            raise SensorUnavailable("vcgencmd is not on PATH (not a Raspberry Pi?)")
        self._read_adc = read_adc or run_vcgencmd
        if not parse_pmic_adc(self._read_adc()):
            raise SensorUnavailable("vcgencmd pmic_read_adc reports no rails (not a Pi 5?)")

    def power_w(self) -> float:
        return sum(parse_pmic_adc(self._read_adc()).values())
