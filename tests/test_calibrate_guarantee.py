"""Guarantee mode (Learn-then-Test): the bound holds at the stated rate over random draws."""

import math

import numpy as np
import pytest
from calibrate_synthetic import synthetic_exits, unit_costs

from edgeexit.calibrate import Budget, ExitTable, certify
from edgeexit.calibrate.guarantee import binomial_cdf, losses
from edgeexit.calibrate.search import exit_indices, search
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


def population_drop(population: ExitTable, thresholds) -> float:
    """Accuracy the thresholds lose against the final exit on the whole population."""
    exits = exit_indices(population.scores, np.asarray(thresholds))
    early = population.correct[exits, np.arange(population.num_samples)].mean()
    return float(population.correct[-1].mean() - early)


def test_accuracy_drop_budget_holds_on_new_data_at_its_confidence():
    # The naive pick (calibration-set drop <= budget, what calibrate did before) overshoots
    # on the population in about half of the draws; the certified one at most 1 - confidence.
    predictions, scores, labels = synthetic_exits(60000, seed=12)
    population = ExitTable.from_predictions(predictions, scores, labels)
    budget = Budget(max_accuracy_drop=0.02, confidence=0.8)
    rng = np.random.default_rng(1)
    trials, violations, naive_violations = 20, 0, 0
    for trial in range(trials):
        draw = population.take(rng.choice(population.num_samples, 800, replace=False))
        cert = certify(draw, unit_costs(), budget, seed=trial)
        assert cert.metric == "accuracy drop"
        violations += population_drop(population, cert.point.thresholds) > 0.02
        naive = search(draw, unit_costs(), budget).per_exit
        naive_violations += population_drop(population, naive.thresholds) > 0.02
    assert violations / trials <= 1 - budget.confidence
    assert naive_violations > violations


def test_a_zero_drop_budget_certifies_only_the_final_exit():
    table = ExitTable.from_predictions(*synthetic_exits(400, seed=2))
    cert = certify(table, unit_costs(), Budget(max_accuracy_drop=0.0))
    assert all(math.isinf(t) for t in cert.point.thresholds) and cert.p_value == 0.0


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


def test_certificate_records_the_path_as_fixed_sequence_testing_saw_it():
    predictions, scores, labels = synthetic_exits(1000, seed=5)
    budget = Budget(risk=0.05, confidence=0.9)
    table = ExitTable.from_predictions(predictions, scores, labels)
    cert = certify(table, unit_costs(), budget)
    verdicts = [p.verdict for p in cert.path]
    assert len(verdicts) == cert.path_length
    # Certified points first; then at most one failure, where testing stopped; then untested.
    tested = [v for v in verdicts if v != "not tested"]
    assert verdicts[: len(tested)] == tested
    assert tested[: cert.certified] == ["certified"] * cert.certified
    assert tested[cert.certified :] in ([], ["not certified"])
    assert all(p.p_value is None for p in cert.path[len(tested) :])
    assert all(p.p_value <= 0.1 for p in cert.path[: cert.certified])
    assert cert.point.mean_latency_ms == min(p.mean_latency_ms for p in cert.path if p.certified)
    doc = cert.to_json()
    assert {"risk", "confidence", "metric", "test_risk", "p_value", "certified"} <= doc.keys()
    assert {"path_length", "test_samples", "method"} <= doc.keys()
    assert doc["path"][0] == {
        "mean_latency_ms": 4.0,  # the safest point: every sample to the final exit
        "test_risk": 0.0,
        "p_value": cert.path[0].p_value,
        "certified": True,
    }
