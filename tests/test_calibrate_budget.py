"""Budget parsing: units in, milliseconds / millijoules out, one-line errors otherwise."""

import pytest

from edgeexit.calibrate import Budget, parse_energy_mj, parse_latency_ms
from edgeexit.errors import CalibrationError


@pytest.mark.parametrize(
    ("text", "ms"), [("4ms", 4.0), ("0.5 ms", 0.5), ("800us", 0.8), ("1s", 1000.0), ("2e-1ms", 0.2)]
)
def test_latency_units(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(("text", "mj"), [("2mJ", 2.0), ("1.5J", 1500.0), ("300uJ", 0.3)])
def test_energy_units(text, mj):
    assert parse_energy_mj(text) == pytest.approx(mj)


@pytest.mark.parametrize("text", ["fast", "4", "4 parsecs", "-1ms", "0ms", "", "2mJ"])
def test_bad_latency_is_one_line_error(text):
    with pytest.raises(CalibrationError) as err:
        parse_latency_ms(text)
    assert "\n" not in str(err.value)


def test_bad_energy_names_expected_form():
    with pytest.raises(CalibrationError, match="expected a number with a unit"):
        parse_energy_mj("4ms")


def test_budget_needs_something_and_refuses_mixing_guarantee():
    with pytest.raises(CalibrationError, match="no budget"):
        Budget()
    with pytest.raises(CalibrationError, match="cannot be combined"):
        Budget(latency_ms=1.0, risk=0.02)
    with pytest.raises(CalibrationError, match="fraction"):
        Budget(max_accuracy_drop=1.5)
    with pytest.raises(CalibrationError, match="confidence"):
        Budget(risk=0.02, confidence=1.0)


def test_from_strings_and_json():
    budget = Budget.from_strings(latency="800us", energy="2mJ")
    assert budget.latency_ms == pytest.approx(0.8)
    assert budget.to_json() == {
        "latency_ms": pytest.approx(0.8),
        "energy_mj": 2.0,
        "confidence": 0.9,
        "risk_metric": "disagreement",
    }
    assert "mean latency <= 0.8 ms" in budget.describe()
