"""Do calibrated budgets hold on new data? 20 random calibration/held-out splits, two models.

For each model (the three-exit noisy-digits CNN, and a 4-layer BERT-like encoder trained on
the synthetic token task), every sample of a pool runs through every exit once; per-exit
costs are measured once (the way calibrate measures them). Then, for each of --splits
random halvings of the pool, calibrate's own search (``pipeline.build_report``) runs on one
half for each budget, and the chosen thresholds are applied to the other half:

  - accuracy drop <= 1 pp, certified at confidence 0.9 (Learn-then-Test), against the
    point estimate calibrate used before (calibration-set drop <= 1 pp, not certified);
  - mean latency <= half the full model's, checked on the one-sided 95 % upper bound of
    the calibration mean (the latency's dependence on where samples leave; the costs are
    held fixed, so timing noise is left out: bench checks that on the device);
  - disagreement with the final exit <= 5 % at confidence 0.9 (guarantee mode).

A budget "held" on a split when the held-out figure is within it. A certified budget must
hold at least as often as its confidence. The speed-up is the full model's cost over the
held-out expected mean latency; the price of a guarantee is its speed-up against the point
estimate's.

    PYTHONPATH=. python benchmarks/coverage.py [--splits 20] [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeexit.calibrate import Budget, ExitTable, evaluate
from edgeexit.calibrate.guarantee import losses
from edgeexit.calibrate.pipeline import CalibrateOptions, build_report, measure_costs
from edgeexit.data import Dataset

SEED = 0


@dataclass(frozen=True)
class Pool:
    name: str
    table: ExitTable  # every pooled sample through every exit
    costs: object  # SegmentCosts, measured once


def digits_pool(work: Path) -> Pool:
    from edgeexit.examples.noisy_bundle import build_digits_bundle

    built = build_digits_bundle(work / "digits")
    parts = [np.load(p) for p in (built.calibration, built.test)]
    x, y = (np.concatenate([p[k] for p in parts]) for k in "xy")
    return _pool("noisy digits, 3-exit CNN", built.bundle, Dataset((x,), y))


def transformer_pool(work: Path, n: int = 4000) -> Pool:
    import torch

    import edgeexit
    from edgeexit.examples import make_token_task, tiny_bert, train_multi_exit

    torch.manual_seed(SEED)
    ids, mask, y = make_token_task(n + 3000, seed=SEED)
    model = tiny_bert(layers=4, dim=48)
    train_multi_exit(model, (ids[n:], mask[n:]), y[n:], epochs=12, lr=3e-3, seed=SEED)
    model.eval()
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    bundle = edgeexit.export(model, example, work / "bert").bundle_dir
    return _pool("token task, 4-layer BERT-like", bundle, Dataset((ids[:n], mask[:n]), y[:n]))


def _pool(name: str, bundle: Path, data: Dataset) -> Pool:
    from edgeexit.calibrate.pipeline import collect_table
    from edgeexit.runtime import Runtime

    runtime = Runtime(bundle)
    costs = measure_costs(runtime, data, CalibrateOptions())
    return Pool(name, collect_table(runtime, data), costs)


def held_out_drop(table: ExitTable, costs, thresholds) -> float:
    """Accuracy lost against the final exit on ``table`` (labels)."""
    point = evaluate(table, costs, np.asarray(thresholds))
    return float(table.correct[-1].mean() - point.accuracy)


def run_pool(pool: Pool, splits: int) -> list[dict]:
    full_ms = float(pool.costs.cumulative_latency_ms[-1])
    budgets = {
        "accuracy drop <= 1 pp (certified, 0.9)": Budget(max_accuracy_drop=0.01),
        "mean latency <= half": Budget(latency_ms=full_ms / 2),
        "disagreement <= 5 % (certified, 0.9)": Budget(risk=0.05, confidence=0.9),
    }
    rng = np.random.default_rng(SEED)
    n = pool.table.num_samples
    rows = []
    for split in range(splits):
        order = rng.permutation(n)
        cal, held = pool.table.take(order[: n // 2]), pool.table.take(order[n // 2 :])
        for name, budget in budgets.items():
            report = build_report(cal, pool.costs, budget)
            chosen = evaluate(held, pool.costs, np.asarray(report.thresholds))
            row = {"model": pool.name, "split": split, "budget": name,
                   "speedup": full_ms / chosen.mean_latency_ms}  # fmt: skip
            if budget.max_accuracy_drop is not None:
                row["figure"] = held_out_drop(held, pool.costs, report.thresholds)
                row["held"] = row["figure"] <= budget.max_accuracy_drop
                naive = report.estimate
                row["naive_figure"] = held_out_drop(held, pool.costs, naive.thresholds)
                row["naive_held"] = row["naive_figure"] <= budget.max_accuracy_drop
                naive_ms = evaluate(held, pool.costs, np.asarray(naive.thresholds)).mean_latency_ms
                row["naive_speedup"] = full_ms / naive_ms
            elif budget.risk is not None:
                row["figure"] = float(losses(held, np.asarray(report.thresholds),
                                             "disagreement").mean())  # fmt: skip
                row["held"] = row["figure"] <= budget.risk
            else:
                row["figure"] = chosen.mean_latency_ms
                row["held"] = chosen.mean_latency_ms <= budget.latency_ms
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> Table:
    table = Table(title="Held-out coverage over random calibration/held-out splits")
    for col in ("model", "budget", "held (certified or as calibrated)", "stated",
                "speed-up", "point estimate: held", "point estimate: speed-up"):  # fmt: skip
        table.add_column(col, justify="right")
    keys = sorted({(r["model"], r["budget"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, budget in keys:
        group = [r for r in rows if r["model"] == model and r["budget"] == budget]
        held = sum(r["held"] for r in group)
        stated = "0.9" if "certified" in budget else "- (estimate, 95 % UCB)"
        naive = [r for r in group if "naive_held" in r]
        table.add_row(
            model,
            budget,
            f"{held}/{len(group)}",
            stated,
            f"{np.mean([r['speedup'] for r in group]):.2f}x",
            f"{sum(r['naive_held'] for r in naive)}/{len(naive)}" if naive else "",
            f"{np.mean([r['naive_speedup'] for r in naive]):.2f}x" if naive else "",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pools = [digits_pool(work), transformer_pool(work)]
        rows = [row for pool in pools for row in run_pool(pool, args.splits)]
        meta = {
            "machine": f"{platform.machine()}, {platform.processor() or '?'}",
            "splits": args.splits,
            "pools": {
                p.name: {
                    "samples": p.table.num_samples,
                    "exit_ms": p.costs.cumulative_latency_ms.tolist(),
                    "final_accuracy": float(p.table.correct[-1].mean()),
                }
                for p in pools
            },  # fmt: skip
        }
    Console().print(summarise(rows))
    Console().print(json.dumps(meta["pools"], indent=1))
    if args.save:
        args.save.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=bool))


if __name__ == "__main__":
    main()
