"""The calibration plot explains the decision: checked through matplotlib's objects, not
pixels, on reports built from synthetic exit tables (no model)."""

import numpy as np
import pytest
from calibrate_synthetic import synthetic_table

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from edgeexit import files  # noqa: E402
from edgeexit.calibrate import Budget, ExitCosts  # noqa: E402
from edgeexit.calibrate.pipeline import build_report  # noqa: E402
from edgeexit.calibrate.report import draw_front, draw_guarantee  # noqa: E402
from edgeexit.energy import MODELED  # noqa: E402
from edgeexit.errors import CalibrationError  # noqa: E402

EXIT_MS = np.array([0.02, 0.05, 0.09, 0.12])


def report_for(budget: Budget):
    costs = ExitCosts.from_measured(EXIT_MS, 1.2 * EXIT_MS, 5 * EXIT_MS, MODELED, "synthetic")
    return build_report(synthetic_table(500, seed=3), costs, budget)


def drawn(draw, report):
    ax = Figure().subplots()
    draw(ax, report)
    return ax


def line(ax, label_start: str):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    return found


def chosen_text(ax) -> str:
    (text,) = [t.get_text() for t in ax.texts if t.get_text().startswith("chosen")]
    return text


def test_front_plot_names_budget_full_model_and_choice():
    report = report_for(Budget(max_accuracy_drop=0.01))
    ax = drawn(draw_front, report)
    assert "accuracy drop <= 1 pp" in ax.get_title()
    assert f"{report.speedup:.2f}x faster than the full model" in ax.get_title()
    assert ax.get_xlabel() == "expected mean latency (ms)"
    assert ax.get_ylabel() == "accuracy (%)"
    floor = 100 * (report.final_accuracy - 0.01)
    assert list(line(ax, "budget: accuracy drop <= 1 pp").get_ydata()) == pytest.approx([floor] * 2)
    full = line(ax, "full model")
    assert list(full.get_xdata()) == pytest.approx([0.12])
    assert list(full.get_ydata()) == pytest.approx([100 * report.final_accuracy])
    front = line(ax, "per-exit front")
    assert list(front.get_ydata()) == pytest.approx([100 * p.accuracy for p in report.front])
    assert max(front.get_ydata()) > 50  # percent, not a fraction
    assert line(ax, "shared threshold front")
    chosen = line(ax, "chosen")
    assert list(chosen.get_ydata()) == pytest.approx([100 * report.chosen.accuracy])
    assert f"{100 * report.chosen.accuracy:.1f} %" in chosen_text(ax)
    assert "certified" in chosen_text(ax)  # an accuracy-drop budget is certified
    estimate = line(ax, "estimate only, not certified")  # what the guarantee costs
    assert list(estimate.get_xdata()) == pytest.approx([report.estimate.mean_latency_ms])
    assert ax.get_legend() is not None


def test_front_plot_draws_a_latency_cap_as_a_vertical_line():
    ax = drawn(draw_front, report_for(Budget(latency_ms=0.07)))
    assert "mean latency <= 0.07 ms" in ax.get_title()
    assert list(line(ax, "budget: mean latency").get_xdata()) == pytest.approx([0.07, 0.07])


def test_front_plot_says_an_energy_budget_is_not_on_its_axes():
    report = report_for(Budget(energy_mj=0.4))
    ax = drawn(draw_front, report)
    assert not [ln for ln in ax.get_lines() if ln.get_label().startswith("budget")]
    (note,) = [t.get_text() for t in ax.texts if "energy budget" in t.get_text()]
    assert "not on these axes" in note and f"{report.chosen.energy_mj:.3g}" in note


def test_guarantee_plot_shows_the_tested_path_against_the_target():
    report = report_for(Budget(risk=0.05, confidence=0.9))
    cert = report.certificate
    ax = drawn(draw_guarantee, report)
    assert "disagreement <= 5 %" in ax.get_title() and "confidence 0.9" in ax.get_title()
    assert ax.get_ylabel() == "disagreement on the calibration set (%)"
    assert list(line(ax, "risk target 5 %").get_ydata()) == pytest.approx([5.0, 5.0])
    certified = line(ax, "certified (p <= 0.1)")
    assert len(certified.get_xdata()) == sum(p.certified for p in cert.path)
    assert list(line(ax, "path").get_ydata()) == pytest.approx([100 * p.risk for p in cert.path])
    chosen = line(ax, "chosen")
    assert list(chosen.get_xdata()) == pytest.approx([report.chosen.mean_latency_ms])
    assert list(chosen.get_ydata()) == pytest.approx([100 * cert.empirical_risk])
    assert f"{100 * cert.empirical_risk:.1f} %" in chosen_text(ax)
    (note,) = [t.get_text() for t in ax.texts if "path points certified" in t.get_text()]
    assert f"tested on all {cert.samples} samples" in note


def test_a_certified_point_inside_the_fronts_says_why_on_the_plot_and_in_the_report():
    report = report_for(Budget(max_accuracy_drop=0.02))
    assert report.off_front is not None  # the front is the calibration set's estimate
    ax = drawn(draw_front, report)
    (note,) = [t.get_text() for t in ax.texts if "fronts are" in t.get_text()]
    assert "fastest that the test accepts" in note
    assert report.to_json()["note"] == report.off_front


def test_guarantee_plot_refuses_a_report_without_certificate():
    with pytest.raises(CalibrationError, match="guarantee mode"):
        drawn(draw_guarantee, report_for(Budget(latency_ms=0.07)))


@pytest.mark.parametrize("budget", [Budget(max_accuracy_drop=0.01), Budget(risk=0.05)])
def test_plot_png_is_a_png_edgeexit_wrote(tmp_path, budget):
    path = tmp_path / "plot.png"
    report_for(budget).save_plot(path)
    assert path.read_bytes().startswith(files.PNG_MAGIC)
    assert files.is_plot(path)
