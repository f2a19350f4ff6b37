"""Energy meters: one interface, one file per backend, and a factory that probes in order.

``get_meter(target)`` tries the target's ``energy_meter``; for ``auto`` it probes, in this
fixed order, the first that answers wins:

1. ``rapl``      Linux powercap RAPL (x86 CPU packages)
2. ``nvml``      NVIDIA GPU total energy (nvidia-ml-py)
3. ``ina3221``   Jetson INA3221 rails (sysfs hwmon)
4. ``rpi5-pmic`` Raspberry Pi 5 PMIC (``vcgencmd pmic_read_adc``)

Each probe's answer is cached for the process. When no sensor answers, the target's power
model is used (``modeled``) and ONE short warning says so, each sensor's reason attached
(``choice.MeterChoice``); with no power model, ``NoMeter`` reports no figure at all, never
a zero.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping

from edgeexit.energy.choice import MeterChoice, announce
from edgeexit.energy.common import (
    EnergyMeter,
    EnergyReading,
    ModeledMeter,
    NoMeter,
    SensorUnavailable,
)
from edgeexit.energy.ina3221 import Ina3221Meter
from edgeexit.energy.nvml import NvmlMeter
from edgeexit.energy.provenance import MODELED, NONE, EnergySource, modeled_energy_mj
from edgeexit.energy.rapl import RaplMeter
from edgeexit.energy.rpi_pmic import RpiPmicMeter
from edgeexit.errors import EnergyMeterError
from edgeexit.targets.spec import Target

__all__ = [
    "PROBE_ORDER",
    "EnergyMeter",
    "EnergyReading",
    "EnergySource",
    "MODELED",
    "NONE",
    "modeled_energy_mj",
    "ModeledMeter",
    "NoMeter",
    "MeterChoice",
    "announce",
    "choose_meter",
    "get_meter",
]

PROBE_ORDER = ("rapl", "nvml", "ina3221", "rpi5-pmic")
# Each sensor's meter (nvml's is also told which GPUs); a sensor module imports nothing
# beyond the standard library until it is opened (pynvml on NvmlMeter()).
SENSORS: dict[str, Callable[[], EnergyMeter]] = {
    "rapl": RaplMeter,
    "nvml": NvmlMeter,
    "ina3221": Ina3221Meter,
    "rpi5-pmic": RpiPmicMeter,
}
ENV_OVERRIDE = "EDGEEXIT_ENERGY_METER"


def get_meter(
    target: Target | None = None,
    *,
    backends: Mapping[str, Callable[[], EnergyMeter]] | None = None,
) -> EnergyMeter:
    """The meter for ``target``: a readable sensor if one exists, else its power model.

    When no sensor answers, ONE warning per process says what the figures will be instead
    (``MeterChoice.notice``: 'energy: modeled from rpi5's power model (7 W); no sensor
    found'), each sensor's reason travelling with it (``record.details``).

    ``backends`` replaces the real sensor factories (tests use fakes); its probes are not
    cached. The environment variable ``EDGEEXIT_ENERGY_METER`` (``modeled``, ``none`` or a
    sensor name) overrides the target's choice for the real sensors: a shared machine whose
    sensor measures other tenants too, or a test run that must not depend on the host.
    """
    meter, choice = choose_meter(target, backends=backends)
    announce(choice.notice, choice.details)
    return meter


def choose_meter(
    target: Target | None = None,
    *,
    backends: Mapping[str, Callable[[], EnergyMeter]] | None = None,
) -> tuple[EnergyMeter, MeterChoice]:
    """``get_meter``'s meter and why it was chosen, without the warning (for a report
    that shows it, such as ``inspect``)."""
    wanted = target.energy_meter if target is not None else "auto"
    probes = wanted not in ("none", "modeled")  # a target that never probes stays as it is
    if probes and backends is None and (forced := os.environ.get(ENV_OVERRIDE)):
        if forced not in (*PROBE_ORDER, "auto", "modeled", "none"):
            raise EnergyMeterError(
                f"{ENV_OVERRIDE}={forced!r}; expected auto, modeled, none or one of "
                f"{', '.join(PROBE_ORDER)}"
            )
        wanted = forced
    name = None if target is None else target.name
    if wanted == "none":
        return NoMeter(), MeterChoice(name, NONE)
    unavailable: list[tuple[str, str]] = []
    if wanted != "modeled":
        for sensor in PROBE_ORDER if wanted == "auto" else (wanted,):
            meter, reason = _open(sensor, target, backends)
            if meter is not None:
                return meter, MeterChoice(name, meter.provenance)
            unavailable.append((sensor, reason))
    if target is not None and target.active_power_w > 0:
        power_w = target.active_power_w
        return ModeledMeter(power_w), MeterChoice(name, MODELED, power_w, tuple(unavailable))
    return NoMeter(), MeterChoice(name, NONE, None, tuple(unavailable))


def _open(
    name: str, target: Target | None, backends: Mapping[str, Callable[[], EnergyMeter]] | None
) -> tuple[EnergyMeter | None, str]:
    """A meter, or None and the reason the sensor cannot be used."""
    if backends is None:
        reason = _cached_probe(name, _gpu_indices(target))
        if reason:
            return None, reason
        factory = _factory(name, _gpu_indices(target))
    else:
        factory = backends.get(name)
        if factory is None:
            return None, "no such backend"
    try:
        return factory(), ""
    except (SensorUnavailable, EnergyMeterError) as err:
        return None, str(err)


@functools.cache
def _cached_probe(name: str, gpu_indices: tuple[int, ...]) -> str:
    """Empty when ``name``'s sensor can be read here, else why not. Cached per process."""
    try:
        _factory(name, gpu_indices)()
    except (SensorUnavailable, EnergyMeterError) as err:
        return str(err)
    return ""


def _factory(name: str, gpu_indices: tuple[int, ...]) -> Callable[[], EnergyMeter]:
    if name == "nvml":
        return functools.partial(NvmlMeter, gpu_indices)
    try:
        return SENSORS[name]
    except KeyError:
        raise EnergyMeterError(
            f"unknown energy meter {name!r}; expected one of {PROBE_ORDER}"
        ) from None


def _gpu_indices(target: Target | None) -> tuple[int, ...]:
    """The GPUs the target's CUDA provider runs on (device_id, default 0)."""
    if target is None:
        return (0,)
    for provider, options in zip(target.providers, target.provider_options):
        if provider == "CUDAExecutionProvider":
            return (int(options.get("device_id", 0)),)
    return (0,)
