"""Do calibrated budgets hold on new data? 20 random calibration/held-out splits, two models.

For each model (the three-exit noisy-digits CNN, and a 4-layer BERT-like encoder trained on
the synthetic token task), every sample of a pool runs through every exit once; per-exit
costs are measured once (the way calibrate measures them). Then, for each of --splits
random halvings of the pool, calibrate (``pipeline.build_report``, confidence 0.9) runs on
one half for each budget, and the chosen thresholds are applied to the other half:

  - accuracy drop <= 1 pp;
  - mean latency <= half the full model's (where samples leave; the costs are held fixed,
    so timing noise is left out: bench checks that on the device);
  - disagreement with the final exit <= 5 % (--risk, guarantee mode).

Each is certified by Learn-then-Test; next to it, the point estimate calibrate used before
(the same search, judged on the calibration half alone). A budget "held" on a split when
the held-out figure is within it; a certified budget must hold at least as often as its
confidence (18 of 20). The speed-up is the full model's cost over the held-out expected
mean latency; the price of the guarantee is the speed-up (or accuracy) it gives up.

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
    costs: object  # ExitCosts, measured once


def digits_pool(work: Path) -> Pool:
    from tests.calibrate_digits import build_digits_bundle

    built = build_digits_bundle(work / "digits")
    parts = [np.load(p) for p in (built.calibration, built.test)]
    x, y = (np.concatenate([p[k] for p in parts]) for k in "xy")
    return _pool("noisy digits, 3-exit CNN", built.bundle, Dataset((x,), y))


def row_transformer(dim: int = 32, layers: int = 4):
    """A 4-layer transformer over a digit's 8 rows as tokens, an exit after every layer."""
    import torch
    from torch import nn

    import edgeexit
    from edgeexit.examples.models import EncoderLayer, MeanPoolHead

    class Rows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, dim)
            self.pos = nn.Parameter(torch.zeros(1, 8, dim))
            self.layer = EncoderLayer(dim, 2)

        def forward(self, x: torch.Tensor):
            h = self.proj(x[:, 0]) + self.pos
            return self.layer(h, torch.ones_like(h[..., 0], dtype=torch.int64))

    segments = [Rows(), *(EncoderLayer(dim, 2) for _ in range(layers - 1))]
    return edgeexit.MultiExit(segments, [MeanPoolHead(dim, 10) for _ in segments])


def transformer_pool(work: Path) -> Pool:
    import torch

    import edgeexit
    from edgeexit.examples import load_digits, train_multi_exit
    from edgeexit.examples.digits import noisy_copies

    torch.manual_seed(SEED)
    clean = load_digits(seed=SEED)
    train = noisy_copies(clean.train, 2, seed=SEED)
    model = row_transformer()
    train_multi_exit(model, train.x, train.y, epochs=EPOCHS, lr=3e-3, seed=SEED)
    model.eval()
    bundle = edgeexit.export(model, torch.from_numpy(train.x[:2]), work / "rows").bundle_dir
    parts = [
        noisy_copies(s, 3, seed=100 + k) for k, s in enumerate((clean.calibration, clean.test))
    ]
    x, y = (np.concatenate([getattr(p, k) for p in parts]) for k in "xy")
    return _pool("noisy digits, 4-layer row transformer", bundle, Dataset((x,), y))


EPOCHS = 8


def _pool(name: str, bundle: Path, data: Dataset) -> Pool:
    from edgeexit.calibrate.pipeline import collect_table
    from edgeexit.runtime import Runtime

    runtime = Runtime(bundle)
    costs = measure_costs(runtime, data, CalibrateOptions())
    return Pool(name, collect_table(runtime, data), costs)


def outcome(held: ExitTable, costs, budget: Budget, thresholds) -> dict:
    """The held-out figure the budget bounds, whether it held, speed-up and accuracy."""
    point = evaluate(held, costs, np.asarray(thresholds))
    if budget.max_accuracy_drop is not None:
        figure, limit = float(held.correct[-1].mean() - point.accuracy), budget.max_accuracy_drop
    elif budget.risk is not None:
        figure, limit = (
            float(losses(held, np.asarray(thresholds), "disagreement").mean()),
            budget.risk,
        )
    else:
        figure, limit = point.mean_latency_ms, budget.latency_ms
    full_ms = float(costs.latency_ms[-1])
    return {"figure": figure, "held": bool(figure <= limit),
            "speedup": full_ms / point.mean_latency_ms, "accuracy": point.accuracy}  # fmt: skip


def run_pool(pool: Pool, splits: int) -> list[dict]:
    full_ms = float(pool.costs.latency_ms[-1])
    budgets = {
        "accuracy drop <= 1 pp": Budget(max_accuracy_drop=0.01),
        "mean latency <= half the full model's": Budget(latency_ms=full_ms / 2),
        "disagreement <= 5 % (--risk)": Budget(risk=0.05),
    }
    rng = np.random.default_rng(SEED)
    n = pool.table.num_samples
    rows = []
    for split in range(splits):
        order = rng.permutation(n)
        cal, held = pool.table.take(order[: n // 2]), pool.table.take(order[n // 2 :])
        for name, budget in budgets.items():
            report = build_report(cal, pool.costs, budget)
            row = {"model": pool.name, "split": split, "budget": name,
                   **outcome(held, pool.costs, budget, report.thresholds)}  # fmt: skip
            if report.estimate is not None:  # what calibrate chose before it certified
                naive = outcome(held, pool.costs, budget, report.estimate.thresholds)
                row.update({f"naive_{k}": v for k, v in naive.items()})
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> Table:
    table = Table(title="Held-out coverage over random calibration/held-out splits")
    for col in ("model", "budget (confidence 0.9)", "certified: held", "speed-up", "accuracy",
                "point estimate: held", "speed-up", "accuracy"):  # fmt: skip
        table.add_column(col, justify="right")
    keys = sorted({(r["model"], r["budget"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, budget in keys:
        group = [r for r in rows if r["model"] == model and r["budget"] == budget]
        naive = [r for r in group if "naive_held" in r]
        cells = [model, budget, *_cells(group, "")]
        cells += _cells(naive, "naive_") if naive else ["", "", ""]
        table.add_row(*cells)
    return table


def markdown(rows: list[dict]) -> str:
    """The summary as a markdown table, for docs/calibrate.md."""
    lines = [
        "| model | budget (confidence 0.9) | certified: held | speed-up | accuracy "
        "| point estimate: held | speed-up | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["budget"]) for r in rows})
    for model, budget in keys:
        group = [r for r in rows if r["model"] == model and r["budget"] == budget]
        naive = [r for r in group if "naive_held" in r]
        cells = [model, budget, *_cells(group, ""), *(_cells(naive, "naive_") if naive else
                 ["-", "-", "-"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells(group: list[dict], prefix: str) -> list[str]:
    held = sum(r[prefix + "held"] for r in group)
    return [
        f"{held}/{len(group)}",
        f"{np.mean([r[prefix + 'speedup'] for r in group]):.2f}x",
        f"{100 * np.mean([r[prefix + 'accuracy'] for r in group]):.1f} %",
    ]


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
                    "exit_ms": list(p.costs.latency_ms),
                    "final_accuracy": float(p.table.correct[-1].mean()),
                }
                for p in pools
            },  # fmt: skip
        }
    Console().print(summarise(rows))
    Console().print(json.dumps(meta["pools"], indent=1))
    if args.save:
        args.save.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=bool))
        args.save.with_suffix(".md").write_text(markdown(rows) + "\n")


if __name__ == "__main__":
    main()
