"""Energy meters: one interface, one file per backend, and a factory that probes in order.

``get_meter(target)`` tries the target's ``energy_meter``; for ``auto`` it probes, in this
fixed order, the first that answers wins:

1. ``rapl``      Linux powercap RAPL (x86 CPU packages)
2. ``nvml``      NVIDIA GPU total energy (nvidia-ml-py)
3. ``ina3221``   Jetson INA3221 rails (sysfs hwmon)
4. ``rpi5-pmic`` Raspberry Pi 5 PMIC (``vcgencmd pmic_read_adc``)

Each probe's answer is cached for the process. When no sensor answers, the target's power
model is used (``modeled``) and ONE warning says why; with no power model, ``NoMeter``
reports no figure at all, never a zero.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping

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
log = logging.getLogger("edgeexit.energy")


def get_meter(
    target: Target | None = None,
    *,
    backends: Mapping[str, Callable[[], EnergyMeter]] | None = None,
) -> EnergyMeter:
    """The meter for ``target``: a readable sensor if one exists, else its power model.

    ``backends`` replaces the real sensor factories (tests use fakes); its probes are not
    cached. The environment variable ``EDGEEXIT_ENERGY_METER`` (``modeled``, ``none`` or a
    sensor name) overrides the target's choice for the real sensors: a shared machine whose
    sensor measures other tenants too, or a test run that must not depend on the host.
    """
    choice = target.energy_meter if target is not None else "auto"
    probes = choice not in ("none", "modeled")  # a target that never probes stays as it is
    if probes and backends is None and (forced := os.environ.get(ENV_OVERRIDE)):
        if forced not in (*PROBE_ORDER, "auto", "modeled", "none"):
            raise EnergyMeterError(
                f"{ENV_OVERRIDE}={forced!r}; expected auto, modeled, none or one of "
                f"{', '.join(PROBE_ORDER)}"
            )
        choice = forced
    if choice == "none":
        return NoMeter()
    if choice != "modeled":
        names = PROBE_ORDER if choice == "auto" else (choice,)
        reasons = []
        for name in names:
            meter, reason = _open(name, target, backends)
            if meter is not None:
                return meter
            reasons.append(f"{name}: {reason}")
        _warn_once(_fallback_message(target, reasons))
    if target is not None and target.active_power_w > 0:
        return ModeledMeter(target.active_power_w)
    return NoMeter()


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


def _fallback_message(target: Target | None, reasons: list[str]) -> str:
    if target is not None and target.active_power_w > 0:
        instead = (
            f"energy is modeled from {target.name}'s power model "
            f"({target.active_power_w:g} W active), not measured"
        )
    else:
        instead = "no energy figures will be reported"
    return f"no energy sensor readable ({'; '.join(reasons)}); {instead}"


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)
