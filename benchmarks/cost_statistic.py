"""Which per-exit cost statistic predicts a deployment? Profiles against bench, same bundle.

Calibrate plans with one figure per exit from a profile. On a shared machine the figures a
profile holds disagree: the per-call median, the median of round means, and a low
percentile of round means (the "uncontended" figure, which assumes the machine is idle).
This benchmark trains the three-exit noisy-digits CNN (tests/calibrate_digits.py), takes
--profiles profiles of its bundle, and benches it as deployed after each (``bench_bundle``,
batch 1, the held-out split) under three threshold settings: every sample at exit 0, half
of them leaving at exit 0, and every early exit disabled (the full model, which the bundle
runs as its plain graph in one call). For each statistic and profile it predicts each
setting's mean latency (held-out shares x per-exit figure, and the profile's figure for
the full model) and reports the error against what bench measured, and the spread of the
predicted speed-up across profiles. "uncontended, no full" is what calibrate planned with
before: the 20th percentile, and the last exit's cost (every head run) for the full model.

    PYTHONPATH=. python benchmarks/cost_statistic.py [--profiles 3] [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeexit.bundle import read_manifest, write_manifest
from edgeexit.calibrate.costs import exit_costs
from edgeexit.calibrate.pipeline import collect_table
from edgeexit.calibrate.search import evaluate
from edgeexit.data import load_data
from edgeexit.energy import NONE
from edgeexit.measure.bench import BenchOptions, bench_bundle
from edgeexit.measure.profiling import profile_bundle
from edgeexit.runtime import Runtime
from tests.calibrate_digits import build_digits_bundle

STATISTICS = ("median", "robust_mean", "uncontended")


def settings(table) -> dict[str, tuple[float, ...]]:
    """Thresholds for: every sample at exit 0, about half leaving at exit 0, the full chain."""
    exits = table.num_exits
    half = float(np.quantile(table.scores[0], 0.5))
    lowest = float(table.scores[0].min())  # every sample's score reaches it
    return {
        "all at exit 0": (lowest,) + (math.inf,) * (exits - 1),
        "half at exit 0": (half,) + (math.inf,) * (exits - 1),
        "full chain": (math.inf,) * exits,
    }


def predicted_ms(profile, statistic: str, table, thresholds, *, full: bool = True) -> float:
    """What calibrate predicts from ``profile`` with ``statistic`` as each exit's figure;
    ``full``: with the profile's figure for the full model as deployed (else the last
    exit's, every head run: what calibrate planned with before it was measured)."""
    exits = [_with_figure(e, statistic) for e in profile.exits]
    whole = _with_figure(profile.full, statistic) if full and profile.full else None
    costs = exit_costs(exits, batch_size=1, energy=NONE, power_w=0.0, source=statistic,
                       full=whole)  # fmt: skip
    return evaluate(table, costs, np.array(thresholds)).mean_latency_ms


def _with_figure(exit_profile, statistic: str):
    # exit_costs plans with ``robust_mean``: put the statistic under test there.
    latency = exit_profile.latency_ms
    figure = replace(latency, robust_mean=getattr(latency, statistic))
    return replace(exit_profile, latency_ms=figure)


def measured_ms(bundle: Path, test: Path, thresholds, rounds: int) -> float:
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest.with_thresholds(thresholds))
    return bench_bundle(bundle, test, BenchOptions(rounds=rounds)).mean_latency_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="bench rounds per setting")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_digits_bundle(Path(tmp))
        specs = read_manifest(built.bundle).inputs
        table = collect_table(Runtime(built.bundle), load_data(built.test, specs))
        cases = settings(table)
        load = [os.getloadavg()[0]]
        profiles, measured = [], {name: [] for name in cases}
        for p in range(args.profiles):  # profiles and benches alternate: same machine
            console.print(f"profile {p + 1}/{args.profiles}")
            profiles.append(profile_bundle(built.bundle, "x86-cpu", rounds=10))
            for name, thresholds in cases.items():
                measured[name].append(measured_ms(built.bundle, built.test, thresholds,
                                                  args.rounds))  # fmt: skip
            load.append(os.getloadavg()[0])
    rows = []
    for statistic in STATISTICS:
        for name, thresholds in cases.items():
            pred = [predicted_ms(p, statistic, table, thresholds) for p in profiles]
            errors = [m / q - 1 for m, q in zip(measured[name], pred)]
            rows.append({"statistic": statistic, "setting": name, "predicted_ms": pred,
                         "measured_ms": measured[name], "error": errors})  # fmt: skip
    for name, thresholds in cases.items():  # before the full model was measured
        pred = [predicted_ms(p, "uncontended", table, thresholds, full=False) for p in profiles]
        rows.append({"statistic": "uncontended, no full", "setting": name, "predicted_ms": pred,
                     "measured_ms": measured[name],
                     "error": [m / q - 1 for m, q in zip(measured[name], pred)]})  # fmt: skip
    doc = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": load,
        "rows": rows,
        "speedups": _speedups(rows, cases),
    }
    Console().print(_table(rows, doc["speedups"]))
    if args.save:
        args.save.write_text(json.dumps(doc, indent=1))


def _speedups(rows, cases) -> dict:
    """Predicted speed-up of 'all at exit 0' per statistic and profile, and bench's."""
    out = {}
    full = {r["statistic"]: r for r in rows if r["setting"] == "full chain"}
    for r in rows:
        if r["setting"] == "all at exit 0":
            f = full[r["statistic"]]
            out[r["statistic"]] = [a / b for a, b in zip(f["predicted_ms"], r["predicted_ms"])]
            out["bench"] = [a / b for a, b in zip(f["measured_ms"], r["measured_ms"])]
    return out


def _table(rows, speedups) -> Table:
    table = Table(title="Per-exit cost statistic against bench (prediction error, per profile)")
    for col in ("statistic", "setting", "predicted ms", "bench ms", "error"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["statistic"], r["setting"],
            " / ".join(f"{v:.4f}" for v in r["predicted_ms"]),
            " / ".join(f"{v:.4f}" for v in r["measured_ms"]),
            " / ".join(f"{100 * e:+.0f}%" for e in r["error"]),
        )  # fmt: skip
    table.caption = "speed-up of 'all at exit 0': " + "; ".join(
        f"{k} " + "/".join(f"{v:.2f}x" for v in vals) for k, vals in speedups.items()
    )
    return table


if __name__ == "__main__":
    main()
