"""get_meter: probe order, fallback to the power model with one warning, cached probes."""

import logging
from dataclasses import replace

import pytest

from edgeexit.energy import PROBE_ORDER, announce, choose_meter, get_meter
from edgeexit.energy.common import EnergyMeter, EnergyReading, NoMeter, SensorUnavailable
from edgeexit.errors import EnergyMeterError
from edgeexit.targets import load_target


class FakeMeter(EnergyMeter):
    measured = True

    def __init__(self, source: str) -> None:
        self.source = source

    def begin_window(self) -> None:
        pass

    def end_window(self) -> EnergyReading:
        return EnergyReading(1.0, self.provenance, 1.0)


def absent(reason: str):
    def factory():
        raise SensorUnavailable(reason)

    return factory


def test_auto_takes_the_first_sensor_in_probe_order():
    assert PROBE_ORDER == ("rapl", "nvml", "ina3221", "rpi5-pmic")
    backends = {
        "rapl": absent("no rapl"),
        "nvml": lambda: FakeMeter("nvml"),
        "ina3221": lambda: FakeMeter("ina3221"),
    }
    meter = get_meter(load_target("x86-cpu"), backends=backends)
    assert meter.source == "nvml"


def test_named_sensor_falls_back_to_the_model_with_one_short_warning(caplog):
    target = load_target("rpi5")
    denied = {"rpi5-pmic": absent("vcgencmd is not on PATH, test 1")}
    with caplog.at_level(logging.WARNING, logger="edgeexit.energy"):
        meters = [get_meter(target, backends=denied) for _ in range(3)]
    assert all(m.source == "modeled" and not m.measured for m in meters)
    [record] = caplog.records
    assert record.getMessage() == (
        "energy: modeled from rpi5's power model (7 W); no sensor found"
    )  # one line, the target whose power model the figures use; the reasons ride along
    assert record.details == "rpi5-pmic: vcgencmd is not on PATH, test 1"


def test_permission_denied_is_a_reason_to_fall_back(caplog):
    def denied():
        raise EnergyMeterError("permission denied; run as root")

    with caplog.at_level(logging.WARNING, logger="edgeexit.energy"):
        meter = get_meter(load_target("x86-cpu"), backends={"rapl": denied})
    assert meter.source == "modeled"
    [record] = caplog.records
    assert record.details.startswith("rapl: permission denied; run as root; nvml: ")


def test_the_choice_says_what_the_figures_are_and_why():
    target = load_target("x86-cpu")
    backends = {"rapl": absent("no RAPL zones"), "nvml": absent("no GPU")}
    meter, choice = choose_meter(target, backends=backends)
    assert meter.modeled_power_w == 10 and choice.power_w == 10
    assert choice.notice == "energy: modeled from x86-cpu's power model (10 W); no sensor found"
    assert choice.details.startswith("rapl: no RAPL zones; nvml: no GPU; ina3221: ")
    assert choice.describe() == f"modeled from x86-cpu's power model (10 W); no sensor found " \
        f"({choice.details})"  # fmt: skip
    assert choice.to_json()["unavailable"]["nvml"] == "no GPU"
    sensed, found = choose_meter(target, backends={"rapl": lambda: FakeMeter("rapl")})
    assert found.notice is None and found.describe() == "measured (rapl)"
    # a target that has no sensor by its profile misses none: nothing to announce
    rpi4 = choose_meter(load_target("rpi4"))[1]
    assert rpi4.notice is None and rpi4.describe() == "modeled from rpi4's power model (6.4 W)"
    bare = replace(target, active_power_w=0.0, idle_power_w=0.0)
    nothing = choose_meter(bare, backends={})[1]
    assert nothing.notice == "energy: not reported (x86-cpu has no power model); no sensor found"


def test_the_notice_is_logged_once_however_often_asked(caplog):
    with caplog.at_level(logging.WARNING, logger="edgeexit.energy"):
        for _ in range(3):
            announce("energy: a notice for this test only", "why: it is a test")
        announce(None)
    assert [r.getMessage() for r in caplog.records] == ["energy: a notice for this test only"]


def test_modeled_reading_is_power_times_time_and_labeled_modeled():
    meter = get_meter(load_target("rpi4"))  # rpi4 has no sensor: modeled without probing
    meter.begin_window()
    reading = meter.end_window()
    assert reading.energy_mj == pytest.approx(6.4 * reading.duration_s * 1e3)
    assert reading.label == "modeled" and not reading.measured


def test_none_and_missing_power_model_give_no_figure_not_zero():
    target = load_target("x86-cpu")
    assert isinstance(get_meter(replace(target, energy_meter="none")), NoMeter)
    no_model = replace(target, active_power_w=0.0, idle_power_w=0.0)
    meter = get_meter(no_model, backends={})
    meter.begin_window()
    assert meter.end_window().energy_mj is None


def test_real_probes_on_this_machine_give_a_labeled_meter():
    # Whatever this host has (RAPL as root, or nothing), the figure says where it is from.
    meter = get_meter(load_target("x86-cpu"))
    meter.begin_window()
    reading = meter.end_window()
    assert reading.source.name in {"rapl", "nvml", "modeled"}
    assert reading.measured == (reading.source.name != "modeled")


def test_the_environment_can_force_the_meter(monkeypatch):
    target = load_target("x86-cpu")
    monkeypatch.setenv("EDGEEXIT_ENERGY_METER", "none")
    assert get_meter(target).source == "none"
    monkeypatch.setenv("EDGEEXIT_ENERGY_METER", "modeled")
    meter = get_meter(target)
    assert meter.source == "modeled" and not meter.measured
    monkeypatch.setenv("EDGEEXIT_ENERGY_METER", "thermometer")
    with pytest.raises(EnergyMeterError, match="expected auto, modeled, none or one of rapl"):
        get_meter(target)
    # fake backends (the probing tests) are never overridden
    assert get_meter(target, backends={"rapl": lambda: FakeMeter("rapl")}).source == "rapl"
