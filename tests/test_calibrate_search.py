"""The pure threshold search on synthetic exit tables."""

import math

import numpy as np
import pytest
from calibrate_synthetic import synthetic_exits, synthetic_table, unit_costs

from edgeexit.calibrate import Budget, ExitCosts, ExitTable, evaluate, search
from edgeexit.calibrate.search import exit_indices, pareto_front, shared_sweep
from edgeexit.energy import NONE
from edgeexit.errors import CalibrationError


def test_exit_rule_matches_runtime_contract():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.0, 0.0, 0.0]])
    exits = exit_indices(scores, np.array([0.5, 0.7, math.inf]))
    assert exits.tolist() == [0, 1, 0]  # score >= threshold exits; the last exit always exits
    assert exit_indices(scores, np.full(3, math.inf)).tolist() == [2, 2, 2]


def test_evaluate_costs_are_cumulative():
    table = synthetic_table(200)
    costs = ExitCosts((1.0, 3.0, 6.0, 10.0), (1.0, 3.0, 6.0, 10.0), None, NONE, "test")
    everyone_first = evaluate(table, costs, np.full(4, -math.inf))
    assert everyone_first.mean_latency_ms == pytest.approx(1.0)
    assert everyone_first.exit_shares == (1.0, 0.0, 0.0, 0.0)
    nobody_early = evaluate(table, costs, np.full(4, math.inf))
    assert nobody_early.mean_latency_ms == pytest.approx(10.0)
    assert nobody_early.accuracy == pytest.approx(table.correct[-1].mean())


@pytest.mark.parametrize(
    "budget",
    [
        Budget(latency_ms=2.0),
        Budget(p95_latency_ms=3.0),
        Budget(energy_mj=25.0),
        Budget(max_accuracy_drop=0.01),
        Budget(latency_ms=3.6, max_accuracy_drop=0.05),
    ],
    ids=["latency", "p95", "energy", "drop", "latency+drop"],
)
def test_per_exit_meets_budget_and_beats_shared_baseline(budget):
    table, costs = synthetic_table(1500), unit_costs()
    result = search(table, costs, budget)
    chosen, shared = result.per_exit, result.shared
    if budget.latency_ms is not None:
        assert chosen.mean_latency_ms <= budget.latency_ms
    if budget.p95_latency_ms is not None:
        assert chosen.p95_latency_ms <= budget.p95_latency_ms
    if budget.energy_mj is not None:
        assert chosen.energy_mj <= budget.energy_mj
    if budget.max_accuracy_drop is not None:
        assert chosen.accuracy >= result.final_accuracy - budget.max_accuracy_drop - 1e-12
        assert chosen.mean_latency_ms <= shared.mean_latency_ms
    else:
        assert chosen.accuracy >= shared.accuracy


def test_per_exit_search_strictly_helps_when_exits_differ():
    # Exit 0's scores are overconfident: one shared threshold cannot suit both exits.
    predictions, scores, labels = synthetic_exits(2000, seed=3)
    scores[0] = np.clip(scores[0] + 0.3, 0, 1)
    table = ExitTable.from_predictions(predictions, scores, labels)
    result = search(table, unit_costs(), Budget(max_accuracy_drop=0.01))
    assert result.per_exit.mean_latency_ms < result.shared.mean_latency_ms - 0.05


def test_cap_holds_on_held_out_draw():
    # Caps are checked on the upper confidence bound, so a fresh draw meets them too.
    costs, budget = unit_costs(), Budget(latency_ms=2.0)
    chosen = search(synthetic_table(1500, seed=1), costs, budget).per_exit
    held_out = evaluate(synthetic_table(20000, seed=2), costs, np.array(chosen.thresholds))
    assert held_out.mean_latency_ms <= budget.latency_ms


def test_unlabeled_accuracy_is_agreement_with_final_exit():
    table = synthetic_table(500, labeled=False)
    assert not table.labeled
    assert table.correct[-1].all()
    result = search(table, unit_costs(), Budget(max_accuracy_drop=0.02))
    assert result.final_accuracy == 1.0
    assert result.per_exit.accuracy >= 0.98


@pytest.mark.parametrize(
    ("budget", "smallest"),
    [
        (Budget(latency_ms=0.5), "smallest achievable mean latency is 1 ms"),
        (Budget(p95_latency_ms=0.5), "smallest achievable p95 latency is 1.2 ms"),
        (Budget(energy_mj=3.0), "smallest achievable energy is 10 mJ"),
    ],
)
def test_budget_below_first_exit_is_refused_with_smallest_figure(budget, smallest):
    with pytest.raises(CalibrationError, match=smallest):
        search(synthetic_table(100), unit_costs(), budget)


def test_energy_budget_without_energy_figure_is_refused():
    costs = ExitCosts((1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0), None, NONE, "test")
    with pytest.raises(CalibrationError, match="needs an energy figure"):
        search(synthetic_table(100), costs, Budget(energy_mj=20.0))


def test_pareto_front_is_monotone():
    table, costs = synthetic_table(800), unit_costs()
    result = search(table, costs, Budget(latency_ms=2.5))
    for front in (result.front, result.shared_front):
        lat = [p.mean_latency_ms for p in front]
        acc = [p.accuracy for p in front]
        assert lat == sorted(lat) and acc == sorted(acc) and len(front) >= 3
    assert pareto_front(shared_sweep(table, costs)) == list(result.shared_front)


def test_infeasible_combination_is_refused():
    with pytest.raises(CalibrationError, match="no thresholds meet the budget"):
        search(synthetic_table(800), unit_costs(), Budget(latency_ms=2.0, max_accuracy_drop=0.0))


def test_mismatched_shapes_are_errors():
    with pytest.raises(CalibrationError, match="labels"):
        ExitTable.from_predictions(np.zeros((2, 5)), np.zeros((2, 5)), np.zeros(4))
    with pytest.raises(CalibrationError, match="must match"):
        search(synthetic_table(50), unit_costs(exits=3), Budget(latency_ms=2.0))
