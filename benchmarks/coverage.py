"""Do certified budgets hold on new data, and how much of the speed-up do they keep?

Three models on noisy digits: the three-exit CNN, a 4-layer transformer over the image's
8 rows as tokens, and a 4-layer Hugging Face ViT (``edgeexit.examples.hf``, random init,
briefly trained). Every sample of a pool (--copies noisy copies of the calibration and
test splits) runs through every exit once; the costs are measured once per pool, the full
model timed as deployed (so they are held fixed: this measures the statistics, not the
machine). Then, for each calibration size in --sizes and each of --splits random draws,
calibrate runs on the drawn samples and the thresholds are judged on the rest of the pool
(the held-out split):

  - accuracy drop <= 1 pp, confidence 0.9 (the tool's main promise);
  - mean latency <= half the full model's;
  - disagreement with the final exit <= 5 % (--risk).

For each: how often the budget held on the held-out split (coverage; a certified budget
must hold in at least 90 % of the splits), the certified speed-up on the held-out split,
the uncertified point estimate calibrate also reports (the per-exit search on the
calibration samples alone), and the best speed-up that thresholds tuned on the held-out
split itself reach under the same budget: an upper bound, not a method. The ratio of the
certified speed-up to that bound is what the certificate keeps of what the data allows.
Noisy copies of one image are correlated, so a pool is less diverse than its size.

    PYTHONPATH=. python benchmarks/coverage.py [--splits 20] [--sizes 450 2000] [--save F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeexit.calibrate import Budget, ExitTable, certify, evaluate
from edgeexit.calibrate.guarantee import losses
from edgeexit.calibrate.search import Objective, best, coordinate_descent, shared_sweep
from edgeexit.data import Dataset
from edgeexit.errors import CalibrationError

SEED = 0
DROP, HALF, RISK = "accuracy drop <= 1 pp", "mean latency <= half the full's", "disagreement <= 5 %"


@dataclass(frozen=True)
class Pool:
    name: str
    table: ExitTable  # every pooled sample through every exit
    costs: object  # ExitCosts, measured once


def digits_pool(work: Path, copies: int) -> Pool:
    from tests.calibrate_digits import build_digits_bundle

    built = build_digits_bundle(work / "digits", eval_copies=copies)
    parts = [np.load(p) for p in (built.calibration, built.test)]
    x, y = (np.concatenate([p[k] for p in parts]) for k in "xy")
    return _pool("3-exit CNN", built.bundle, Dataset((x,), y))


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


def tiny_vit():
    """A 4-layer Hugging Face ViT over 2x2 patches of the 8x8 digit, an exit per layer."""
    from transformers import ViTConfig, ViTModel

    from edgeexit.examples.hf import multi_exit_vit

    config = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=48, num_hidden_layers=4,
        num_attention_heads=2, intermediate_size=96,
    )  # fmt: skip
    return multi_exit_vit(ViTModel(config, add_pooling_layer=False), 10)


def trained_pool(
    name: str, model, work: Path, copies: int, *, epochs: int = 8, lr: float = 3e-3
) -> Pool:
    import torch

    import edgeexit
    from edgeexit.examples import load_digits, train_multi_exit
    from edgeexit.examples.digits import noisy_copies

    clean = load_digits(seed=SEED)
    train = noisy_copies(clean.train, 2, seed=SEED)
    train_multi_exit(model, train.x, train.y, epochs=epochs, lr=lr, seed=SEED)
    model.eval()
    folder = work / name.replace(" ", "-")
    bundle = edgeexit.export(model, torch.from_numpy(train.x[:2]), folder).bundle_dir
    parts = [
        noisy_copies(s, copies, seed=100 + k) for k, s in enumerate((clean.calibration, clean.test))
    ]
    x, y = (np.concatenate([getattr(p, k) for p in parts]) for k in "xy")
    return _pool(name, bundle, Dataset((x,), y))


def _pool(name: str, bundle: Path, data: Dataset) -> Pool:
    from edgeexit.calibrate.pipeline import (
        CalibrateOptions,
        collect_table,
        full_model_runtime,
        measure_costs,
    )
    from edgeexit.runtime import Runtime

    runtime = Runtime(bundle, bodies=False)  # every head timed, as calibrate does
    costs = measure_costs(runtime, data, CalibrateOptions(), full=full_model_runtime(runtime))
    return Pool(name, collect_table(runtime, data), costs)


def budgets(costs) -> dict[str, Budget]:
    return {
        DROP: Budget(max_accuracy_drop=0.01),
        HALF: Budget(latency_ms=costs.full_ms / 2),
        RISK: Budget(risk=0.05),
    }


def held_figure(held: ExitTable, budget: Budget, thresholds) -> float:
    """What the budget bounds, on the held-out split."""
    if budget.max_accuracy_drop is not None:
        return float(losses(held, np.asarray(thresholds), "accuracy drop").mean())
    if budget.risk is not None:
        return float(losses(held, np.asarray(thresholds), "disagreement").mean())
    return float("nan")  # a latency cap: judged from the expected latency below


def outcome(held: ExitTable, costs, budget: Budget, thresholds) -> dict:
    point = evaluate(held, costs, np.asarray(thresholds))
    figure = held_figure(held, budget, thresholds)
    if budget.latency_ms is not None:
        figure, limit = point.mean_latency_ms, budget.latency_ms
    else:
        limit = budget.max_accuracy_drop if budget.risk is None else budget.risk
    return {"held": bool(figure <= limit), "speedup": costs.full_ms / point.mean_latency_ms,
            "accuracy": point.accuracy}  # fmt: skip


def estimate(table: ExitTable, costs, budget: Budget):
    """The uncertified per-exit choice on ``table`` (calibrate's search without its fronts),
    or None when nothing there meets the budget."""
    if budget.risk is not None:  # disagreement as the drop of 'agreement with the final'
        table = ExitTable(table.scores, table.agrees, table.agrees, table.labeled)
        budget = Budget(max_accuracy_drop=budget.risk)
    objective = Objective.for_budget(budget, table)
    start = best(shared_sweep(table, costs), objective)
    point = coordinate_descent(table, costs, objective, start)
    return point if objective.feasible(point) else None


def run_pool(pool: Pool, size: int, splits: int, console: Console) -> list[dict]:
    rng = np.random.default_rng(SEED + size)
    n = pool.table.num_samples
    rows = []
    for split in range(splits):
        order = rng.permutation(n)
        cal, held = pool.table.take(order[:size]), pool.table.take(order[size:])
        for name, budget in budgets(pool.costs).items():
            row = {"model": pool.name, "samples": size, "split": split, "budget": name}
            try:
                cert = certify(cal, pool.costs, budget)
                row.update(outcome(held, pool.costs, budget, cert.point.thresholds))
            except CalibrationError:  # nothing certified: the full model
                row.update(outcome(held, pool.costs, budget, [np.inf] * cal.num_exits))
            guess = estimate(cal, pool.costs, budget)
            if guess is not None:
                naive = outcome(held, pool.costs, budget, guess.thresholds)
                row.update({f"estimate_{k}": v for k, v in naive.items()})
            bound = estimate(held, pool.costs, budget) if name != HALF else None
            if bound is not None:
                row["bound_speedup"] = pool.costs.full_ms / bound.mean_latency_ms
            rows.append(row)
        console.print(f"{pool.name}, {size} samples: split {split + 1}/{splits}", end="\r")
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["model"], r["samples"], r["budget"]) for r in rows})
    for model, size, budget in keys:
        key = (model, size, budget)
        group = [r for r in rows if (r["model"], r["samples"], r["budget"]) == key]
        naive = [r for r in group if "estimate_held" in r]
        bounded = [r for r in group if "bound_speedup" in r]
        ratios = [r["speedup"] / r["bound_speedup"] for r in bounded]
        out.append({
            "model": model, "samples": size, "budget": budget, "splits": len(group),
            "held": sum(r["held"] for r in group),
            "speedup": float(np.mean([r["speedup"] for r in group])),
            "estimate_held": sum(r["estimate_held"] for r in naive) if naive else None,
            "estimate_splits": len(naive),
            "estimate_speedup": float(np.mean([r["estimate_speedup"] for r in naive]))
            if naive else None,
            "bound_speedup": float(np.mean([r["bound_speedup"] for r in bounded]))
            if bounded else None,
            "ratio": float(np.mean(ratios)) if ratios else None,
            "ratio_min": float(np.min(ratios)) if ratios else None,
        })  # fmt: skip
    return out


COLUMNS = ("model", "samples", "budget (confidence 0.9)", "certified: held", "speed-up",
           "estimate: held", "speed-up", "held-out-tuned bound", "certified / bound")  # fmt: skip


def cells(s: dict) -> list[str]:
    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    estimate_held = "-" if s["estimate_held"] is None else (
        f"{s['estimate_held']}/{s['estimate_splits']}"
    )  # fmt: skip
    ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f} (min {s['ratio_min']:.2f})"
    return [s["model"], str(s["samples"]), s["budget"], f"{s['held']}/{s['splits']}",
            x(s["speedup"]), estimate_held, x(s["estimate_speedup"]), x(s["bound_speedup"]),
            ratio]  # fmt: skip


def markdown(summaries: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(s)) + " |" for s in summaries]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[450, 2000])
    parser.add_argument("--copies", type=int, default=12, help="noisy copies per split")
    parser.add_argument("--models", nargs="+", default=["cnn", "rows", "vit"])
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    console, started = Console(stderr=True), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        makers = {
            "cnn": lambda: digits_pool(work, args.copies),
            "rows": lambda: trained_pool("row transformer", row_transformer(), work, args.copies),
            "vit": lambda: trained_pool(
                "HF ViT", tiny_vit(), work, args.copies, epochs=15, lr=1e-3
            ),
        }
        pools = []
        for key in args.models:
            console.print(f"building the {key} pool")
            pools.append(makers[key]())
    rows = [
        r for p in pools for size in args.sizes for r in run_pool(p, size, args.splits, console)
    ]
    summaries = summary(rows)
    table = Table(title="Certified budgets on held-out splits (confidence 0.9)")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for s in summaries:
        table.add_row(*cells(s))
    Console().print(table)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "splits": args.splits,
        "minutes": round((time.time() - started) / 60, 1),
        "pools": {
            p.name: {
                "samples": p.table.num_samples,
                "exit_ms": list(p.costs.latency_ms),
                "full_ms": p.costs.full_ms,
                "exit_accuracy": p.table.correct.mean(axis=1).tolist(),
            }
            for p in pools
        },
    }
    Console().print(json.dumps(meta, indent=1))
    if args.save:
        args.save.write_text(json.dumps({"meta": meta, "summary": summaries, "rows": rows},
                                        indent=1))  # fmt: skip
        args.save.with_suffix(".md").write_text(markdown(summaries) + "\n")


if __name__ == "__main__":
    main()
