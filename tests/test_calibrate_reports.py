"""Calibration reports never contradict themselves: exits counted as exits, a noise figure
only where one was measured, a speed-up beside 'no early exit' says what it compares, and
a 'never' threshold has a JSON spelling (null) wherever a report is written."""

import json
import math

import numpy as np
from calibrate_synthetic import synthetic_table, unit_costs
from rich.console import Console

from edgeexit import files
from edgeexit.bundle import thresholds_json
from edgeexit.calibrate import Budget, ExitCosts
from edgeexit.calibrate.pipeline import build_report
from edgeexit.energy import NONE
from edgeexit.measure import verdict


def rendered(report) -> str:
    console = Console(width=200, record=True)
    console.print(report)
    return console.export_text()


def never_report():
    return build_report(synthetic_table(60, seed=4), unit_costs(), Budget(max_accuracy_drop=0.001))


def test_exits_kept_are_counted_as_exits():
    report = never_report()
    line = report.exits_line
    assert line.startswith("exits kept: 1 of 4 (exit 3); disabled: exits 0, 1 and 2")
    assert line in rendered(report)


def test_a_never_threshold_is_null_in_every_json_the_report_writes():
    report = never_report()
    assert thresholds_json([math.inf, 0.5, math.inf]) == [None, 0.5, None]
    text = files.dumps_json(report.to_json())  # strict: refuses inf
    doc = json.loads(text)
    assert doc["expected"]["thresholds"][:3] == [None, None, None]
    assert all(p["mean_latency_ms"] is not None for p in doc["guarantee"]["path"])


def test_noise_is_shown_only_where_it_was_measured():
    ms = np.array([1.0, 2.0, 1.9, 4.0])  # exit 2 measured cheaper than exit 1: clipped
    clipped = ExitCosts.from_measured(ms, ms, None, NONE, "here", noise=0.0)
    advice = build_report(synthetic_table(400, seed=1), clipped, Budget(latency_ms=3.0)).too_noisy
    assert "1 exit(s) measured cheaper" in advice and "+-0" not in advice and "%" not in advice


def test_a_speedup_beside_no_early_exit_says_what_it_compares():
    (said,) = verdict.warnings(1.14, (1.1, 1.2), 1.0, None, None, 1, early_exits=False)
    assert "no early exit" in said and "(1.14x) compares the full model run as one graph" in said
    assert "no speed-up is possible" not in said


def test_the_comparison_table_calls_the_reference_the_full_model_as_deployed():
    report = build_report(synthetic_table(800, seed=2), unit_costs(), Budget(latency_ms=3.0))
    text = rendered(report)
    assert "full model (no early exit)" in text and "final exit only" not in text


def test_the_costs_record_names_exit_costs_and_segment_shares_apart():
    report = build_report(synthetic_table(400, seed=1), unit_costs(), Budget(latency_ms=3.0))
    record = report.to_json()["profile"]
    assert record["exit_latency_ms"] == [1.0, 2.0, 3.0, 4.0]  # what leaving at each costs
    assert record["segment_share_ms"] == [1.0, 1.0, 1.0, 1.0]  # each segment's part of it
    assert record["full_model_ms"] == 4.0 and "latency_ms" not in record
