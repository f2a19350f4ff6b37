"""Guarantee mode (Learn-then-Test): the bound holds at the stated rate over random draws."""

import math

import numpy as np
import pytest
from calibrate_synthetic import synthetic_exits, unit_costs

from edgeexit.calibrate import Budget, ExitTable, certify
from edgeexit.calibrate.guarantee import binomial_cdf, losses
from edgeexit.errors import CalibrationError


def test_binomial_cdf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n, p in [(0, 10, 0.1), (3, 50, 0.02), (20, 1000, 0.02), (999, 1000, 0.5)]:
        assert binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9)


def test_bound_holds_over_repeated_draws():
    # A big population stands in for the truth; each trial calibrates on a small draw and
    # checks the chosen thresholds' population risk. Violations must stay under delta.
    predictions, scores, labels = synthetic_exits(60000, seed=11)
    population = ExitTable.from_predictions(predictions, scores, labels)
    budget = Budget(risk=0.05, confidence=0.8)
    rng = np.random.default_rng(0)
    trials, violations, speedups = 20, 0, []
    for trial in range(trials):
        draw = population.take(rng.choice(population.num_samples, 600, replace=False))
        cert = certify(draw, unit_costs(), budget, seed=trial)
        true_risk = losses(population, np.array(cert.point.thresholds), "disagreement").mean()
        violations += true_risk > budget.risk
        speedups.append(4.0 / cert.point.mean_latency_ms)
    assert violations / trials <= 1 - budget.confidence
    assert np.mean(speedups) > 1.1  # and it is not vacuous: it does exit early


def test_error_metric_needs_labels_and_refuses_impossible_risk():
    predictions, scores, _ = synthetic_exits(400, seed=1)
    unlabeled = ExitTable.from_predictions(predictions, scores)
    with pytest.raises(CalibrationError, match="needs labels"):
        certify(unlabeled, unit_costs(), Budget(risk=0.1, risk_metric="error"))
    labeled = ExitTable.from_predictions(*synthetic_exits(400, seed=1))
    with pytest.raises(CalibrationError, match="no thresholds can be certified"):
        certify(labeled, unit_costs(), Budget(risk=0.01, risk_metric="error"))


def test_certificate_reports_its_test():
    predictions, scores, labels = synthetic_exits(1000, seed=5)
    cert = certify(
        ExitTable.from_predictions(predictions, scores, labels),
        unit_costs(),
        Budget(risk=0.05, confidence=0.9),
    )
    assert cert.p_value <= 0.1 and cert.certified >= 1 and cert.test_samples == 500
    assert cert.point.mean_latency_ms < 4.0
    assert not math.isnan(cert.test_risk)
