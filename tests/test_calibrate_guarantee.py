"""Certified budgets (Learn-then-Test on every sample): the bound holds at its stated rate
over random draws, and it keeps the speed-up a valid test can keep."""

import math

import numpy as np
import pytest
from calibrate_synthetic import synthetic_exits, unit_costs

from edgeexit.calibrate import Budget, ExitTable, certify
from edgeexit.calibrate.guarantee import losses
from edgeexit.calibrate.path import shared_path
from edgeexit.calibrate.search import (
    Objective,
    best,
    coordinate_descent,
    evaluate_many,
    exit_indices,
    shared_sweep,
)
from edgeexit.calibrate.tails import binomial_cdf, binomial_critical
from edgeexit.errors import CalibrationError


def test_binomial_cdf_and_critical_count_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n, p in [(0, 10, 0.1), (3, 50, 0.02), (20, 1000, 0.02), (999, 1000, 0.5)]:
        assert binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9)
    for n, p, level in [(450, 0.01, 0.1), (2000, 0.05, 0.05), (30, 0.3, 0.1), (10, 0.01, 0.1)]:
        k = binomial_critical(n, p, level)
        assert k == -1 or stats.binom.cdf(k, n, p) <= level
        assert stats.binom.cdf(k + 1, n, p) > level


def test_the_path_is_every_shared_threshold_strict_to_loose():
    # The sweep over records must agree with evaluating each threshold directly.
    table = ExitTable.from_predictions(*synthetic_exits(300, seed=4))
    path = shared_path(table, unit_costs())
    assert math.isinf(path.thresholds[0]) and np.all(np.diff(path.thresholds[1:]) < 0)
    vectors = np.stack([path.vector(k) for k in range(path.length)])
    exits = exit_indices(table.scores, vectors)
    right = table.correct[exits, np.arange(table.num_samples)]
    final = table.correct[-1]
    assert np.array_equal(path.losses, (final & ~right).sum(axis=1))
    assert np.array_equal(path.gains, (~final & right).sum(axis=1))
    points = evaluate_many(table, unit_costs(), vectors)
    assert path.mean_latency_ms == pytest.approx([p.mean_latency_ms for p in points])
    assert path.exit_counts[-1, 0] == table.num_samples  # the loosest: all leave at exit 0


def test_bound_holds_over_repeated_draws():
    # A big population stands in for the truth; each trial calibrates on a small draw and
    # checks the chosen thresholds' population risk. Violations must stay under delta.
    predictions, scores, labels = synthetic_exits(60000, seed=11)
    population = ExitTable.from_predictions(predictions, scores, labels)
    budget = Budget(risk=0.05, confidence=0.8)
    rng = np.random.default_rng(0)
    trials, violations, speedups = 20, 0, []
    for _ in range(trials):
        draw = population.take(rng.choice(population.num_samples, 600, replace=False))
        cert = certify(draw, unit_costs(), budget)
        true_risk = losses(population, np.array(cert.point.thresholds), "disagreement").mean()
        violations += true_risk > budget.risk
        speedups.append(4.0 / cert.point.mean_latency_ms)
    assert violations / trials <= 1 - budget.confidence
    assert np.mean(speedups) > 1.1  # and it is not vacuous: it does exit early


def uncertified(table: ExitTable, budget: Budget):
    """What the search picks on the calibration set alone (its per-exit choice, no fronts)."""
    objective = Objective.for_budget(budget, table)
    start = best(shared_sweep(table, unit_costs()), objective)
    return coordinate_descent(table, unit_costs(), objective, start)


def population_drop(population: ExitTable, thresholds) -> float:
    """Accuracy the thresholds lose against the final exit on the whole population."""
    exits = exit_indices(population.scores, np.asarray(thresholds))
    early = population.correct[exits, np.arange(population.num_samples)].mean()
    return float(population.correct[-1].mean() - early)


def test_accuracy_drop_budget_holds_on_new_data_at_its_confidence():
    # The naive pick (calibration-set drop <= budget) overshoots on the population in about
    # half of the draws; the certified one at most 1 - confidence.
    predictions, scores, labels = synthetic_exits(60000, seed=12)
    population = ExitTable.from_predictions(predictions, scores, labels)
    budget = Budget(max_accuracy_drop=0.02, confidence=0.8)
    rng = np.random.default_rng(1)
    trials, violations, naive_violations = 100, 0, 0
    for trial in range(trials):
        draw = population.take(rng.choice(population.num_samples, 800, replace=False))
        cert = certify(draw, unit_costs(), budget)
        assert cert.metric == "accuracy drop"
        violations += population_drop(population, cert.point.thresholds) > 0.02
        if trial < 20:
            naive = uncertified(draw, budget)
            naive_violations += population_drop(population, naive.thresholds) > 0.02
    # At most 20 % in truth: 28 or more of 100 would happen by chance < 3 % of the time.
    assert violations < 28
    assert naive_violations / 20 > violations / trials


def fixing_population(n: int, seed: int) -> ExitTable:
    """Two exits whose early one fixes as many of the final exit's mistakes as it makes new
    ones (3 % each way): its accuracy drop is 0, whatever share leaves early."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=int)
    kind = rng.choice(3, n, p=[0.03, 0.03, 0.94])  # early wrong, final wrong, both right
    early = np.where(kind == 0, 1, 0)
    final = np.where(kind == 1, 1, 0)
    scores = np.stack([rng.uniform(0.5, 1.0, n), np.ones(n)])
    return ExitTable.from_predictions(np.stack([early, final]), scores, labels)


def test_gains_count_in_the_drop_so_an_exit_that_fixes_mistakes_is_certified():
    # The early exit makes as many mistakes as it fixes: its drop is 0. Counting only its
    # mistakes (what calibrate did before) stops certifying far earlier along the path.
    certified, losses_only = [], []
    for seed in range(8):
        table = fixing_population(1000, seed=seed)
        cert = certify(table, unit_costs(2), Budget(max_accuracy_drop=0.01))
        assert cert.p_value <= 0.1 and cert.empirical_risk < 0.01
        certified.append(cert.point.exit_shares[0])
        path = shared_path(table, unit_costs(2))
        refused = [binomial_cdf(int(a), 1000, 0.01) > 0.1 for a in path.losses]
        losses_only.append(path.exit_counts[refused.index(True) - 1, 0] / 1000)
    assert np.mean(certified) > 2 * np.mean(losses_only)


def test_a_zero_drop_budget_certifies_only_the_final_exit():
    table = ExitTable.from_predictions(*synthetic_exits(400, seed=2))
    cert = certify(table, unit_costs(), Budget(max_accuracy_drop=0.0))
    assert all(math.isinf(t) for t in cert.point.thresholds) and cert.p_value == 0.0


def test_too_few_samples_say_how_many_would_do():
    table = ExitTable.from_predictions(*synthetic_exits(60, seed=4))
    cert = certify(table, unit_costs(), Budget(max_accuracy_drop=0.01))
    assert not cert.exits_early
    assert "could be certified with 60 calibration samples" in cert.needed
    assert "would certify early exits giving" in cert.needed


def test_error_metric_needs_labels_and_refuses_impossible_risk():
    predictions, scores, _ = synthetic_exits(400, seed=1)
    unlabeled = ExitTable.from_predictions(predictions, scores)
    with pytest.raises(CalibrationError, match="needs labels"):
        certify(unlabeled, unit_costs(), Budget(risk=0.1, risk_metric="error"))
    labeled = ExitTable.from_predictions(*synthetic_exits(400, seed=1))
    with pytest.raises(CalibrationError, match="no thresholds can be certified"):
        certify(labeled, unit_costs(), Budget(risk=0.01, risk_metric="error"))


def test_certificate_reports_its_test_on_every_sample():
    predictions, scores, labels = synthetic_exits(1000, seed=5)
    table = ExitTable.from_predictions(predictions, scores, labels)
    cert = certify(table, unit_costs(), Budget(risk=0.05, confidence=0.9))
    assert cert.p_value <= cert.level == pytest.approx(0.1)
    assert cert.certified >= 2 and cert.samples == 1000
    assert cert.point.mean_latency_ms < 4.0
    # Fixed-sequence: certified points first, then the refused one, then untested ones.
    verdicts = [p.verdict for p in cert.path]
    tested = [v for v in verdicts if v != "not tested"]
    assert verdicts[: len(tested)] == tested
    assert tested.count("not certified") <= 1 and tested[-1:] in (["certified"], ["not certified"])
    assert cert.point.mean_latency_ms == pytest.approx(
        min(p.mean_latency_ms for p in cert.path if p.certified)
    )
    doc = cert.to_json()
    assert {"risk", "confidence", "metric", "empirical_risk", "p_value", "level"} <= doc.keys()
    assert {"certified", "path_length", "samples", "method", "path"} <= doc.keys()
    assert doc["path"][0] == {
        "mean_latency_ms": 4.0,  # the safest point: every sample to the final exit
        "risk": 0.0,
        "p_value": None,
        "certified": True,
        "tested": True,
    }


def test_caps_alone_take_the_most_accurate_point_within_them():
    table = ExitTable.from_predictions(*synthetic_exits(800, seed=6))
    budget = Budget(latency_ms=2.5)
    cert = certify(table, unit_costs(), budget)
    assert cert.metric is None and cert.caps == "mean latency <= 2.5 ms"
    assert cert.point.mean_latency_ms < 2.5 and cert.p_value <= 0.1


def test_a_risk_and_caps_each_take_half_the_level():
    table = ExitTable.from_predictions(*synthetic_exits(800, seed=6))
    cert = certify(table, unit_costs(), Budget(max_accuracy_drop=0.1, latency_ms=3.5))
    assert cert.level == pytest.approx(0.05) and "delta / 2" in cert.procedure
    assert cert.point.mean_latency_ms < 3.5 and cert.empirical_risk <= 0.1


def test_a_risk_and_caps_that_cannot_meet_say_where_each_stops():
    table = ExitTable.from_predictions(*synthetic_exits(800, seed=6))
    with pytest.raises(CalibrationError, match="certified only down to .* ms mean latency"):
        certify(table, unit_costs(), Budget(max_accuracy_drop=0.02, latency_ms=2.5))


def test_certified_exits_slower_than_the_one_graph_full_model_say_so():
    # Every exit costs about the same (a call's fixed cost dominates) and the bundle runs
    # the full model as one graph, heads skipped: no early exit pays, whatever is certified.
    from edgeexit.calibrate import ExitCosts
    from edgeexit.energy import MODELED

    flat = ExitCosts(latency_ms=(1.0, 1.05, 1.1), p95_latency_ms=(1.2, 1.25, 1.3),
                     energy_mj=None, energy=MODELED, source="synthetic",
                     head_ms=(0.2, 0.2, 0.2))  # fmt: skip
    table = ExitTable.from_predictions(*synthetic_exits(2000, seed=3, exits=3))
    cert = certify(table, flat, Budget(max_accuracy_drop=0.2))
    assert not cert.exits_early and cert.certified > 1
    assert "none is faster than the full model as deployed" in cert.needed


def mostly_easy(n: int, seed: int, easy: float = 0.95) -> ExitTable:
    """Four exits; a share ``easy`` of samples is confident at exit 0, the rest only at the
    last. Every exit agrees with the last (a cap is the only budget that matters)."""
    rng = np.random.default_rng(seed)
    confident = rng.uniform(size=n) < easy
    scores = np.stack([np.where(confident, 0.95, 0.1)] + [np.full(n, 0.1)] * 2 + [np.ones(n)])
    predictions = np.zeros((4, n), dtype=int)
    return ExitTable.from_predictions(predictions, scores, np.zeros(n, dtype=int))


def test_a_cap_near_the_first_exits_cost_is_certified_where_most_samples_leave_there():
    # 95 % leave at exit 0 (1 ms), 5 % at exit 3 (4 ms): mean 1.15 ms. Hoeffding over the
    # 1-4 ms range would need the mean under 1.3 - 0.15 ms at 450 samples; the shares' exact
    # bounds certify it.
    cert = certify(mostly_easy(450, seed=0), unit_costs(), Budget(latency_ms=1.3))
    assert cert.point.exit_shares[0] > 0.9 and cert.p_value <= 0.1


def test_the_mean_cost_bound_holds_over_draws():
    from edgeexit.calibrate.caps import mean_upper_bound

    population = mostly_easy(200_000, seed=1, easy=0.7)
    costs = unit_costs()
    true = shared_path(population, costs).mean_latency_ms[-1]  # the loosest point
    rng = np.random.default_rng(2)
    misses = 0
    for _ in range(200):
        draw = population.take(rng.choice(population.num_samples, 300, replace=False))
        path = shared_path(draw, costs)
        vectors = np.stack([np.full((1, 4), np.inf)[0], np.zeros(4)])
        per_exit = costs.per_exit_latency(vectors)
        misses += mean_upper_bound(path, per_exit, 0.1)[-1] < true
    assert misses < 30  # at most 10 % in truth: 30 of 200 would happen < 1 % of the time
