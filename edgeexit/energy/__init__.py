"""Energy meters: one interface, one file per backend, a factory that probes in order."""

from edgeexit.energy.common import EnergyMeter, EnergyReading, ModeledMeter, NoMeter

__all__ = ["EnergyMeter", "EnergyReading", "ModeledMeter", "NoMeter", "get_meter"]


def get_meter(target=None) -> EnergyMeter:
    """The meter for ``target``: a readable sensor if one exists, else the power model.

    The sensor backends (RAPL, NVML, INA3221, Pi 5 PMIC) are probed in a fixed order;
    until they land, this falls back to the target's power model.
    """
    if target is not None and target.energy_meter == "none":
        return NoMeter()
    if target is not None and target.active_power_w > 0:
        return ModeledMeter(target.active_power_w)
    return NoMeter()
