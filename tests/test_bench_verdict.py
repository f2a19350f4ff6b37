"""Verdicts: a calibrated budget is met or missed on held-out data, with margin and interval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeexit.budget import Budget
from edgeexit.energy import MODELED
from edgeexit.measure import verdict

N = 400


def held_out(early_ms=0.5, full_ms=1.0, wrong_early=0, wrong_full=0, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, N)
    early, full = truth.copy(), truth.copy()
    early[:wrong_early] = (truth[:wrong_early] + 1) % 10
    full[N - wrong_full :] = (truth[N - wrong_full :] + 1) % 10
    return verdict.HeldOut(
        early_ms=rng.normal(early_ms, early_ms / 10, N),
        full_ms=rng.normal(full_ms, full_ms / 10, N),
        early_predictions=early,
        full_predictions=full,
        labels=truth if labels else None,
        energy_mj=rng.normal(2.0, 0.2, N),
        energy=MODELED,
    )


def check_for(budget: Budget, held: verdict.HeldOut) -> verdict.Check:
    (check,) = verdict.checks(budget, held, verdict.resample(N))
    return check


def test_a_mean_latency_within_budget_is_met_with_its_margin_and_interval():
    check = check_for(Budget(latency_ms=0.6), held_out(early_ms=0.5))
    assert check.met and not check.uncertain
    assert check.margin == pytest.approx(0.6 - check.measured)
    assert check.low < check.measured < check.high < 0.6
    assert "met, margin" in check.describe() and "95% CI" in check.describe()


def test_a_mean_latency_over_budget_is_missed():
    check = check_for(Budget(latency_ms=0.4), held_out(early_ms=0.5))
    assert not check.met and check.margin < 0
    assert "MISSED" in check.describe()


def test_an_interval_across_the_budget_is_said():
    held = held_out(early_ms=0.5)
    check = check_for(Budget(latency_ms=float(held.early_ms.mean()) + 1e-4), held)
    assert check.met and check.uncertain
    assert "crosses the budget" in check.describe()


def test_accuracy_drop_is_paired_against_the_full_chain_in_points():
    # 12 early mistakes, 4 full-chain mistakes on other samples: 2 pp lost.
    held = held_out(wrong_early=12, wrong_full=4)
    check = check_for(Budget(max_accuracy_drop=0.01), held)
    assert check.measured == pytest.approx(2.0)
    assert not check.met and check.unit == "pp"
    assert check_for(Budget(max_accuracy_drop=0.03), held).met


def test_without_labels_the_drop_is_disagreement_and_says_so():
    held = held_out(wrong_early=8, labels=False)
    check = check_for(Budget(max_accuracy_drop=0.01), held)
    assert check.measured == pytest.approx(2.0) and "disagreement" in check.note


def test_energy_check_carries_its_source():
    check = check_for(Budget(energy_mj=1.0), held_out())
    assert not check.met and "modeled" in check.describe()


def test_guarantee_mode_checks_the_held_out_risk():
    check = check_for(Budget(risk=0.05, confidence=0.9), held_out(wrong_early=4))
    assert check.name == "disagreement" and check.measured == pytest.approx(1.0) and check.met


def test_every_budget_part_gets_its_own_check():
    budget = Budget(latency_ms=1.0, p95_latency_ms=1.0, energy_mj=5.0, max_accuracy_drop=0.05)
    names = [c.name for c in verdict.checks(budget, held_out(), verdict.resample(N))]
    assert names == ["mean latency", "p95 latency", "energy", "accuracy drop"]


def test_a_slower_bundle_is_flagged_in_words():
    said = verdict.warnings(0.82, (0.8, 0.85), 1.2, None, None, 1)
    assert len(said) == 1 and "SLOWER than the full model" in said[0]
    assert verdict.warnings(1.3, (1.2, 1.4), 1.0, None, None, 1) == ()


def test_a_prediction_more_than_ten_percent_off_is_flagged():
    assert verdict.warnings(2.0, (1.9, 2.1), 1.05, 1.0, 1, 1) == ()
    (said,) = verdict.warnings(2.0, (1.9, 2.1), 1.2, 1.0, 1, 1)
    assert "+20%" in said and "more than 10% off" in said


def test_a_prediction_for_another_batch_size_is_not_compared():
    (said,) = verdict.warnings(2.0, (1.9, 2.1), 5.0, 1.0, 1, 32)
    assert "not compared" in said and "batch 32" in said


def test_check_json_is_strict_and_complete():
    doc = check_for(Budget(latency_ms=0.6), held_out()).to_json()
    assert set(doc) == {"name", "limit", "measured", "ci", "ci_level", "unit", "met", "margin",
                        "note"}  # fmt: skip
    json.dumps(doc, allow_nan=False)


# ---- through the CLI -----------------------------------------------------------------------


def _with_budget(bundle, budget: Budget):
    """Write a calibration block as calibrate would for a (much faster) device."""
    from edgeexit.bundle import read_manifest, write_manifest

    manifest = read_manifest(bundle)
    block = {"budget": budget.to_json(), "expected": {"mean_latency_ms": 1e-6}}
    write_manifest(bundle, manifest.with_extra(calibration=block))


def test_bench_check_fails_on_a_missed_budget_and_still_reports(tmp_path):
    pytest.importorskip("torch")
    from calibrate_cli_bundle import fresh_bundle
    from typer.testing import CliRunner

    from edgeexit.cli import app

    bundle, data = fresh_bundle(tmp_path)
    _with_budget(bundle, Budget(latency_ms=1e-6))
    args = ["bench", str(bundle), "--data", str(data), "--rounds", "2"]
    result = CliRunner().invoke(app, [*args, "--check", "--json"])
    assert result.exit_code == 1, result.output
    assert "bench --check failed: budget missed on this data (mean latency)" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "missed" and doc["checks"][0]["met"] is False
    assert any("more than 10% off" in w for w in doc["warnings"])
    # Without --check the same report is printed and the exit code is 0.
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and "MISSED" in plain.output


def test_bench_check_on_a_bundle_never_calibrated_is_a_one_line_error(tmp_path):
    pytest.importorskip("torch")
    from calibrate_cli_bundle import fresh_bundle
    from typer.testing import CliRunner

    from edgeexit.cli import app

    bundle, data = fresh_bundle(tmp_path)
    result = CliRunner().invoke(app, ["bench", str(bundle), "--data", str(data), "--check"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: --check: {bundle} was never calibrated, so there is no budget to check; "
        "run edgeexit calibrate first"
    ]


def test_a_bundle_that_never_exits_early_says_so_instead_of_slower():
    (said,) = verdict.warnings(0.99, (0.97, 1.01), 1.0, None, None, 1, early_exits=False)
    assert "every sample to the final exit" in said and "SLOWER" not in said


def test_check_fails_only_when_surely_slower_or_a_budget_is_missed():
    from dataclasses import replace

    from edgeexit.measure.bench import BenchReport

    check = check_for(Budget(latency_ms=0.6), held_out(early_ms=0.5))
    fields = {f: None for f in BenchReport.__dataclass_fields__}
    report = BenchReport(**{**fields, "checks": (check,), "speedup": 0.99,
                            "speedup_ci": (0.97, 1.01), "early_exits": True})  # fmt: skip
    assert report.verdict == "met" and report.passed  # noise around 1x is not a failure
    assert not replace(report, speedup=0.8, speedup_ci=(0.78, 0.82)).passed
    # no early exit: the bundle is the full model, never "slower" than itself
    assert replace(report, early_exits=False, speedup=0.99, speedup_ci=(0.985, 0.995)).passed
    missed = check_for(Budget(latency_ms=0.4), held_out(early_ms=0.5))
    assert not replace(report, checks=(missed,), speedup=2.0, speedup_ci=(1.9, 2.1)).passed


def test_calibrate_says_when_nothing_early_could_be_certified():
    from calibrate_synthetic import synthetic_table, unit_costs

    from edgeexit.calibrate.pipeline import build_report

    report = build_report(
        synthetic_table(60, seed=4), unit_costs(), Budget(max_accuracy_drop=0.001)
    )
    assert all(t == float("inf") for t in report.thresholds[:-1])
    (warning,) = report.warnings
    assert "no early exit" in warning and "with 60 calibration samples" in warning
    assert "would certify early exits giving" in warning
    assert report.to_json()["trust"]["warnings"] == [warning]
