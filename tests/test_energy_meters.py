"""Each energy backend against faked hardware: sysfs trees in tmp_path, a recorded
`vcgencmd pmic_read_adc` output, and nvidia-ml-py patched with autospec."""

import time
from pathlib import Path
from unittest import mock

import pynvml
import pytest

from edgeexit.energy.common import SensorUnavailable
from edgeexit.energy.ina3221 import Ina3221Meter
from edgeexit.energy.nvml import NvmlMeter
from edgeexit.energy.rapl import RaplMeter, delta_uj
from edgeexit.energy.rpi_pmic import RpiPmicMeter, parse_pmic_adc
from edgeexit.errors import EnergyMeterError

FIXTURES = Path(__file__).parent / "fixtures"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def fake_rapl(root: Path, energy_uj: int, max_range_uj: int = 262143328850) -> Path:
    zone = root / "intel-rapl:0"
    write(zone / "name", "package-0")
    write(zone / "max_energy_range_uj", str(max_range_uj))
    write(zone / "energy_uj", str(energy_uj))
    # A sub-zone (cores) lies inside the package: counting it too would double the figure.
    write(root / "intel-rapl:0:0" / "energy_uj", "999999")
    write(root / "intel-rapl:0:0" / "max_energy_range_uj", str(max_range_uj))
    # So does a laptop's platform ("psys") zone, which contains the package.
    write(root / "intel-rapl:1" / "name", "psys")
    write(root / "intel-rapl:1" / "energy_uj", "777777")
    write(root / "intel-rapl:1" / "max_energy_range_uj", str(max_range_uj))
    return zone / "energy_uj"


def test_rapl_window_is_the_counter_difference_in_mj(tmp_path):
    counter = fake_rapl(tmp_path, 1_000_000)
    meter = RaplMeter(tmp_path)
    assert [z.name for z in meter.zones] == ["intel-rapl:0"]
    meter.begin_window()
    counter.write_text("3500000\n")
    reading = meter.end_window()
    assert reading.energy_mj == pytest.approx(2500.0)
    assert (reading.source.sensor, reading.measured, reading.label) == (
        "rapl",
        True,
        "measured (rapl)",
    )


def test_rapl_counter_wrap_around_is_unwrapped(tmp_path):
    counter = fake_rapl(tmp_path, 990_000, max_range_uj=1_000_000)
    meter = RaplMeter(tmp_path)
    meter.begin_window()
    counter.write_text("4000\n")
    assert meter.end_window().energy_mj == pytest.approx(14.0)  # 10 000 + 4 000 uJ
    assert delta_uj(5, 9, 10) == 4


def test_rapl_permission_denied_says_how_to_fix(tmp_path):
    fake_rapl(tmp_path, 1)
    real_read = Path.read_text

    def denied(self, *a, **kw):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read(self, *a, **kw)

    with (
        mock.patch.object(Path, "read_text", autospec=True, side_effect=denied),
        pytest.raises(EnergyMeterError, match="only root can read RAPL.*chmod"),
    ):
        RaplMeter(tmp_path)


def test_rapl_absent_is_unavailable(tmp_path):
    with pytest.raises(SensorUnavailable):
        RaplMeter(tmp_path)


def fake_ina3221(root: Path, rails: dict[str, tuple[float, float]]) -> Path:
    hwmon = root / "1-0040" / "hwmon" / "hwmon3"
    for channel, (name, (mv, ma)) in enumerate(rails.items(), start=1):
        write(hwmon / f"in{channel}_label", name)
        write(hwmon / f"in{channel}_input", str(mv))
        write(hwmon / f"curr{channel}_input", str(ma))
    return hwmon


def test_ina3221_uses_vdd_in_alone_when_monitored(tmp_path):
    fake_ina3221(
        tmp_path,
        {"VDD_IN": (5000, 1000), "VDD_CPU_GPU_CV": (5000, 400), "VDD_SOC": (5000, 300)},
    )
    meter = Ina3221Meter(tmp_path, interval_s=0.01)
    assert meter.power_w() == pytest.approx(5.0)
    meter.begin_window()
    reading = meter.end_window()
    assert reading.energy_mj == pytest.approx(5.0 * reading.duration_s * 1e3, rel=1e-6)
    assert reading.source.sensor == "ina3221" and reading.measured


def test_ina3221_sums_rails_and_skips_unconnected_channels(tmp_path):
    fake_ina3221(tmp_path, {"VDD_GPU": (1000, 2000), "VDD_CPU": (1000, 1000), "NC": (9, 9)})
    assert Ina3221Meter(tmp_path).power_w() == pytest.approx(3.0)


def test_ina3221_samples_in_a_thread_and_integrates(tmp_path):
    hwmon = fake_ina3221(tmp_path, {"VDD_IN": (5000, 1000)})
    meter = Ina3221Meter(tmp_path, interval_s=0.005)
    meter.begin_window()

    time.sleep(0.05)
    # 5 W -> 15 W mid-window, replaced whole as sysfs serves it (a write in place could be
    # read half-done by the sampling thread)
    (hwmon / "curr1_new").write_text("3000\n")
    (hwmon / "curr1_new").replace(hwmon / "curr1_input")
    time.sleep(0.05)
    reading = meter.end_window()
    average_w = reading.energy_mj / 1e3 / reading.duration_s
    assert len(meter._samples) >= 2  # how many more depends on the scheduler, not the meter
    assert 5.0 < average_w < 15.0


def test_ina3221_a_reading_that_is_no_number_is_a_sensor_error(tmp_path):
    hwmon = fake_ina3221(tmp_path, {"VDD_IN": (5000, 1000)})
    meter = Ina3221Meter(tmp_path, interval_s=0.005)
    (hwmon / "curr1_input").write_text("\n")
    with pytest.raises(EnergyMeterError, match="not a reading"):
        meter.power_w()


def test_ina3221_absent_is_unavailable(tmp_path):
    with pytest.raises(SensorUnavailable):
        Ina3221Meter(tmp_path)


def recorded_pmic() -> str:
    return (FIXTURES / "vcgencmd_pmic_read_adc.txt").read_text()


def test_pmic_output_is_parsed_into_rail_power():
    rails = parse_pmic_adc(recorded_pmic())
    assert "EXT5V" not in rails  # voltage only: no current, no power
    assert rails["VDD_CORE"] == pytest.approx(0.716 * 0.8807)
    assert len(rails) == 12
    assert sum(rails.values()) == pytest.approx(1.7136, abs=1e-3)  # summed by hand


def test_pmic_meter_integrates_sampled_power():
    meter = RpiPmicMeter(read_adc=recorded_pmic, interval_s=0.005)
    meter.begin_window()
    reading = meter.end_window()
    expected_w = sum(parse_pmic_adc(recorded_pmic()).values())
    assert reading.energy_mj == pytest.approx(expected_w * reading.duration_s * 1e3, rel=1e-6)
    assert reading.label == "measured (rpi5-pmic)"


def test_pmic_without_rails_is_unavailable():
    with pytest.raises(SensorUnavailable, match="no rails"):
        RpiPmicMeter(read_adc=lambda: 'error=1 error_msg="Command not registered"\n')


def test_pmic_failing_mid_window_raises_instead_of_a_partial_figure():
    outputs = iter([recorded_pmic()] * 2)

    def flaky() -> str:
        try:
            return next(outputs)
        except StopIteration:
            raise EnergyMeterError("vcgencmd pmic_read_adc did not answer") from None

    meter = RpiPmicMeter(read_adc=flaky, interval_s=0.001)
    meter.begin_window()

    time.sleep(0.02)
    with pytest.raises(EnergyMeterError, match="did not answer"):
        meter.end_window()


@pytest.fixture
def fake_nvml():
    with (
        mock.patch.object(pynvml, "nvmlInit", autospec=True) as init,
        mock.patch.object(pynvml, "nvmlDeviceGetCount", autospec=True, return_value=2),
        mock.patch.object(pynvml, "nvmlDeviceGetHandleByIndex", autospec=True) as handle,
        mock.patch.object(pynvml, "nvmlDeviceGetTotalEnergyConsumption", autospec=True) as energy,
    ):
        handle.side_effect = lambda i: f"gpu{i}"
        yield init, energy


def test_nvml_window_is_the_total_energy_difference(fake_nvml):
    init, energy = fake_nvml
    energy.side_effect = [1000, 1000, 1750]  # probe, begin, end (mJ)
    meter = NvmlMeter((1,))
    meter.begin_window()
    reading = meter.end_window()
    assert reading.energy_mj == pytest.approx(750.0)
    assert reading.label == "measured (nvml)"
    init.assert_called_once_with()
    energy.assert_called_with("gpu1")


def test_nvml_without_energy_counter_is_unavailable(fake_nvml):
    _, energy = fake_nvml
    energy.side_effect = pynvml.NVMLError_NotSupported()
    with pytest.raises(SensorUnavailable, match="Volta"):
        NvmlMeter()


def test_nvml_missing_gpu_is_unavailable(fake_nvml):
    with pytest.raises(SensorUnavailable, match="NVML sees 2"):
        NvmlMeter((5,))


def test_nvml_driver_missing_is_unavailable():
    with (
        mock.patch.object(
            pynvml,
            "nvmlInit",
            autospec=True,
            side_effect=pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
        ),
        pytest.raises(SensorUnavailable, match="NVML cannot start"),
    ):
        NvmlMeter()


@pytest.mark.gpu
def test_nvml_on_a_real_gpu():
    try:
        meter = NvmlMeter()
    except SensorUnavailable as err:
        pytest.skip(f"no NVML energy counter here: {err}")
    meter.begin_window()
    time.sleep(meter.min_window_s)
    reading = meter.end_window()
    assert reading.energy_mj > 0 and reading.label == "measured (nvml)"
