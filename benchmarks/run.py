"""The benchmark suite (`make bench`): edgeexit against what users run instead, in one run.

On the same machine, inputs and thread count (torch and ONNX Runtime both at 1 thread), for
the digits ResNet trained on noisy digits and calibrated with `--max-accuracy-drop 0.01`:

  full-onnx   (a) the monolithic ONNX graph of the full model (export_monolithic), called with
              IOBinding into pre-allocated buffers: the fastest way to run the whole network
  edgeexit    (b) the calibrated chain, Runtime.run: per-sample exits, a batch is compacted as
              samples leave
  torch-ee    (c) the same early-exit policy (same thresholds, same scores) in PyTorch eager,
              as research code does it: loop over segments and heads under inference_mode,
              stop when every sample of the batch has passed a threshold; the whole batch runs
              until its slowest sample exits (no compaction)
  oracle      (d) each sample at its earliest correct exit (earliest agreeing with the final
              exit when none is correct): the bound no threshold can beat. Timed, not
              computed: batch 1 runs Runtime.run with the exit forced to the oracle's;
              batch 64 runs the chain segment by segment (Runtime.run_segment), each segment
              on the rows still in, so the oracle pays the same compaction as edgeexit

Batch 1 and batch 64 on the held-out test split. Every round runs each variant over the whole
split, the variants in a shuffled order, so drift on a shared machine hits them alike; the
table shows median latency per call, and throughput and speed-up ratios from the median time
of one pass over the split, plus paired ratios (median of per-round ratios).

Usage:
  PYTHONPATH=. python benchmarks/run.py [--widths 16,48] [--rounds 15] [--quick] [--out DIR]
Writes suite.{json,md} into --out only (`make bench` gives build/bench/); the recorded
figures in benchmarks/results/ change only with `--out benchmarks/results`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from edgeexit.measure.profiling import forced_exit
from edgeexit.measure.rounds import shuffled_orders

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("full-onnx", "edgeexit", "torch-ee", "oracle")
BATCH_SIZES = (1, 64)
GOAL_BATCH1_VS_TORCH = 1.5  # edgeexit >= 1.5x faster than torch-ee at batch 1
SEED = 0
# width -> (epochs, lr): the wider net needs a gentler rate and longer to reach the narrow
# one's accuracy (at 1e-2 for 6 epochs it stops near 68% on the test split, 80% for w=16)
TRAINING = {16: (6, 1e-2), 48: (12, 3e-3)}


def build(width: int, out: Path, epochs: int | None):
    """Train, export (chain + monolithic), calibrate; return model, bundle, mono path, data."""
    from edgeexit import export
    from edgeexit.calibrate import Budget
    from edgeexit.calibrate.pipeline import calibrate_bundle
    from edgeexit.examples import digits_resnet, load_noisy_digits, train_multi_exit
    from edgeexit.export import export_monolithic

    data = load_noisy_digits(seed=SEED, max_noise_std=0.6)
    torch.manual_seed(SEED)
    model = digits_resnet(width=width)
    default_epochs, lr = TRAINING.get(width, (12, 3e-3))
    epochs = epochs or default_epochs
    train_multi_exit(model, data.train.x, data.train.y, epochs=epochs, lr=lr, seed=SEED)
    model.eval()
    example = torch.from_numpy(data.test.x[:4])
    bundle = export(model, example, out / "bundle").bundle_dir
    mono = export_monolithic(model, example, out / "mono.onnx")
    cal = data.calibration.save_npz(out / "calibration.npz")
    report = calibrate_bundle(bundle, cal, Budget(max_accuracy_drop=0.01))
    return model, bundle, mono, data.test, report


class FullOnnx:
    """(a) The monolithic graph, IOBinding into buffers pre-allocated per batch size."""

    def __init__(self, mono_path: Path, runtime, num_exits: int) -> None:
        from edgeexit.runtime.buffers import bound_runner
        from edgeexit.runtime.session import session_options

        self.session = ort.InferenceSession(
            str(mono_path), session_options(runtime.config), providers=["CPUExecutionProvider"]
        )
        self._bound = bound_runner
        self._last = f"logits_{num_exits - 1}"
        self._calls: dict[int, tuple] = {}

    def _bind(self, x: np.ndarray) -> tuple:
        stage = np.empty_like(x)
        names = [o.name for o in self.session.get_outputs()]
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: x})
        buffers = dict(zip(names, (np.empty_like(o) for o in outputs)))
        io = self.session.io_binding()
        io.bind_input(
            self.session.get_inputs()[0].name, "cpu", 0, x.dtype, x.shape, stage.ctypes.data
        )
        for name, buf in buffers.items():
            io.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        # every bound buffer must outlive the binding: ORT writes into all of them
        return stage, buffers, self._bound(self.session, io, ort.RunOptions())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) not in self._calls:
            self._calls[len(x)] = self._bind(x)
        stage, buffers, run = self._calls[len(x)]
        stage[:] = x
        run()
        return buffers[self._last].argmax(axis=1)


def torch_early_exit(model, thresholds, criterion: str) -> Callable[[np.ndarray], np.ndarray]:
    """(c) The early-exit loop as research code writes it: the batch runs until its slowest
    sample has exited; each sample keeps the prediction of the first exit it passed."""
    from edgeexit.export.model import as_carry, split_head
    from edgeexit.export.scores import exit_score

    last = len(thresholds) - 1

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        carry = (torch.from_numpy(x),)
        prediction = torch.empty(len(x), dtype=torch.int64)
        done = torch.zeros(len(x), dtype=torch.bool)
        for i, (segment, head) in enumerate(zip(model.segments, model.exits)):
            out = as_carry(segment(*carry), "segment")
            logits, gate = split_head(head(*out), "exit")
            leaving = ~done
            if i < last:
                score = exit_score(criterion, logits, gate, carry[0], out[0])
                leaving &= score >= thresholds[i]
            prediction[leaving] = logits[leaving].argmax(dim=1)
            done |= leaving
            carry = out
            if bool(done.all()):
                break
        return prediction.numpy()

    return run


def oracle_exits(runtime, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each sample's earliest correct exit, else its earliest exit agreeing with the last."""
    predictions = runtime.run_all_exits(x).logits.argmax(axis=2)  # [exits, N]
    correct = predictions == y[None, :]
    agree = predictions == predictions[-1][None, :]
    target = np.where(correct.any(axis=0), correct.argmax(axis=0), agree.argmax(axis=0))
    return target.astype(np.int64)


def oracle_runner(runtime, exits_of: Callable[[int, int], np.ndarray]):
    """(d) Timed oracle: batch 1 through Runtime.run with the exit forced to the oracle's;
    larger batches segment by segment, each on the rows that have not left yet."""
    n = runtime.num_exits
    forced = [forced_exit(n, i) for i in range(n)]

    def run(x: np.ndarray, start: int) -> np.ndarray:
        exits = exits_of(start, len(x))
        if len(x) == 1:
            return runtime.run(x, thresholds=forced[int(exits[0])]).predictions
        prediction = np.empty(len(x), dtype=np.int64)
        rows, feeds = np.arange(len(x)), [x]
        for i in range(n):
            carry, logits, _ = runtime.run_segment(i, feeds)
            leaving = exits[rows] == i
            prediction[rows[leaving]] = logits[leaving].argmax(axis=1)
            staying = ~leaving
            if not staying.any():
                break
            rows, feeds = rows[staying], [c[staying] for c in carry]
        return prediction

    return run


def time_variants(fns: dict[str, Callable], batches: list, rounds: int) -> dict[str, np.ndarray]:
    """Seconds per call, [rounds, batches] per variant.

    Each round runs every variant over the whole split, in a shuffled order: variants
    alternate round by round (so drift on a shared machine hits them alike) while each runs
    warm over consecutive calls, as a deployed model does. Interleaving per call instead would
    time every call cold after another framework has evicted the caches.
    """
    times = {name: np.empty((rounds, len(batches))) for name in fns}
    for fn in fns.values():  # warm-up: arenas, caches, bindings
        for start, xb in batches[:8]:
            fn(xb, start)
    for r, order in enumerate(shuffled_orders(list(fns), rounds, SEED)):
        for name in order:
            fn, row = fns[name], times[name][r]
            for k, (start, xb) in enumerate(batches):
                t0 = time.perf_counter()
                fn(xb, start)
                row[k] = time.perf_counter() - t0
    return times


def bench_batch(fns: dict, runtime, x: np.ndarray, y: np.ndarray, batch: int, rounds: int):
    """Accuracy, latency per call and throughput per variant, with ratios to the baselines.

    Ratios compare the median over rounds of one pass over the split (> 1: faster than the
    baseline); paired ratios are the median of per-round ratios.
    """
    n = len(x) // batch * batch  # whole batches only, so every call has `batch` samples
    batches = [(s, np.ascontiguousarray(x[s : s + batch])) for s in range(0, n, batch)]
    predictions = {
        name: np.concatenate([fn(xb, s) for s, xb in batches]) for name, fn in fns.items()
    }
    exits = np.concatenate([runtime.run(xb).exit_index for _, xb in batches])
    times = time_variants(fns, batches, rounds)
    passes = {name: t.sum(axis=1) for name, t in times.items()}  # seconds per pass [rounds]
    rows = {}
    for name in fns:
        rows[name] = {
            "median_ms": float(np.median(times[name]) * 1e3),
            "p90_ms": float(np.percentile(times[name], 90) * 1e3),
            "throughput_per_s": float(n / np.median(passes[name])),
            "accuracy": float((predictions[name] == y[:n]).mean()),
            "agreement_with_edgeexit": float((predictions[name] == predictions["edgeexit"]).mean()),
        }
        if name == "edgeexit":
            rows[name]["exit_counts"] = np.bincount(exits, minlength=runtime.num_exits).tolist()
        for base in ("full-onnx", "torch-ee"):
            key = base.replace("-", "_")
            ratio = np.median(passes[base]) / np.median(passes[name])
            rows[name][f"x_vs_{key}"] = float(ratio)
            rows[name][f"paired_x_vs_{key}"] = float(np.median(passes[base] / passes[name]))
    return {"samples": n, "rounds": rounds, "variants": rows}


def bench_width(width: int, rounds: int, epochs: int | None, tmp: Path) -> dict:
    from edgeexit.runtime import Runtime

    model, bundle, mono, test, report = build(width, tmp / f"w{width}", epochs)
    runtime = Runtime(bundle, threads=1)
    thresholds = runtime.manifest.thresholds
    oracle = oracle_exits(runtime, test.x, test.y)
    full = FullOnnx(mono, runtime, runtime.num_exits)
    eager = torch_early_exit(model, thresholds, runtime.manifest.criterion)

    fns = {
        "full-onnx": lambda x, s: full(x),
        "edgeexit": lambda x, s: runtime.run(x).predictions,
        "torch-ee": lambda x, s: eager(x),
        "oracle": oracle_runner(runtime, lambda s, b: oracle[s : s + b]),
    }
    result = {
        "model": f"digits_resnet w={width}",
        "thresholds": [None if math.isinf(t) else t for t in thresholds],
        "oracle_exit_counts": np.bincount(oracle, minlength=runtime.num_exits).tolist(),
        "calibrated_exit_shares": list(report.chosen.exit_shares),
        "batches": {},
    }
    for batch in BATCH_SIZES:
        # a batch-64 pass is 5 calls: more rounds give its medians as many calls
        n_rounds = rounds if batch == 1 else rounds * 4
        result["batches"][str(batch)] = bench_batch(fns, runtime, test.x, test.y, batch, n_rounds)
    return result


def goals(model: dict) -> dict[str, bool]:
    b1 = model["batches"]["1"]["variants"]["edgeexit"]
    b64 = model["batches"]["64"]["variants"]["edgeexit"]
    return {
        "batch 1: edgeexit >= 1.5x torch-ee": b1["x_vs_torch_ee"] >= GOAL_BATCH1_VS_TORCH,
        "batch 64: edgeexit throughput > full-onnx": b64["x_vs_full_onnx"] > 1.0,
    }


def markdown(results: dict) -> str:
    lines = [
        "# Benchmark suite: edgeexit vs the alternatives",
        "",
        f"Machine: {results['machine']}; torch {results['torch']}, onnxruntime "
        f"{results['onnxruntime']}, both at 1 thread; load average after the run "
        f"{results['load_average']}. Noisy-digits test split; thresholds calibrated with "
        "`--max-accuracy-drop 0.01` on the calibration split.",
        "",
        "| model | batch | variant | accuracy | median ms/call | throughput /s "
        "| × full-onnx (paired) | × torch-ee (paired) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for model in results["models"]:
        for batch, block in model["batches"].items():
            for name, r in block["variants"].items():
                lines.append(
                    f"| {model['model']} | {batch} | {name} | {r['accuracy']:.1%} | "
                    f"{r['median_ms']:.3f} | {r['throughput_per_s']:,.0f} | "
                    f"{r['x_vs_full_onnx']:.2f} ({r['paired_x_vs_full_onnx']:.2f}) | "
                    f"{r['x_vs_torch_ee']:.2f} ({r['paired_x_vs_torch_ee']:.2f}) |"
                )
    lines += ["", "Goals:", ""]
    for model in results["models"]:
        for goal, ok in model["goals"].items():
            lines.append(f"- {model['model']}, {goal}: {'met' if ok else 'NOT met'}")
    lines += ["", "Where samples leave (test split, % per exit):", ""]
    for model in results["models"]:
        chosen = model["batches"]["1"]["variants"]["edgeexit"]
        oracle = model["oracle_exit_counts"]
        lines.append(
            f"- {model['model']}: calibrated {_shares(chosen['exit_counts'])}; "
            f"oracle {_shares(oracle)}"
        )
    lines += [
        "",
        NOTES,
        "",
        "Reproduce: `make bench` (or `PYTHONPATH=. python benchmarks/run.py`)",
        "",
    ]
    return "\n".join(lines)


def _shares(counts: list[int]) -> str:
    total = max(sum(counts), 1)
    return " / ".join(f"{100 * c / total:.0f}" for c in counts)


NOTES = """Variants: **full-onnx** the monolithic ONNX graph of the whole network (IOBinding,
pre-allocated buffers); **edgeexit** the calibrated chain (`Runtime.run`, per-sample exits,
the batch compacted as samples leave); **torch-ee** the same thresholds and scores in PyTorch
eager as research code writes it — at batch 64 the whole batch runs until its slowest sample
has exited (no compaction); **oracle** each sample at its earliest correct exit (earliest
agreeing with the final exit if none is correct), *timed*: batch 1 by `Runtime.run` with that
exit forced, batch 64 segment by segment via `Runtime.run_segment` on the rows still in.
Every round runs each variant over the whole split (variants in a shuffled order per round).
Throughput and the × columns come from the median time of one pass over the split
(> 1 = faster than that baseline); in brackets the paired ratio, the median of per-round
ratios."""


def render(results: dict) -> Table:
    table = Table(title="edgeexit vs alternatives (medians, 1 thread)")
    for col in ("model", "batch", "variant", "ms/call", "/s", "acc", "×full", "×torch"):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for model in results["models"]:
        for batch, block in model["batches"].items():
            for name, r in block["variants"].items():
                table.add_row(
                    model["model"], batch, name, f"{r['median_ms']:.3f}",
                    f"{r['throughput_per_s']:,.0f}", f"{r['accuracy']:.1%}",
                    f"{r['x_vs_full_onnx']:.2f}", f"{r['x_vs_torch_ee']:.2f}",
                )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="16,48", help="digits_resnet widths, comma-separated")
    parser.add_argument("--rounds", type=int, default=15, help="passes over the test split")
    parser.add_argument("--epochs", type=int, default=None, help="default: per width")
    parser.add_argument("--quick", action="store_true", help="w=16, 1 round, 2 epochs: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"write the figures here (recorded: {RESULTS})"
    )
    args = parser.parse_args()
    widths = [16] if args.quick else [int(w) for w in args.widths.split(",")]
    rounds, epochs = (1, 2) if args.quick else (args.rounds, args.epochs)
    torch.set_num_threads(1)
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for width in widths:
            model = bench_width(width, rounds, epochs, Path(tmp))
            model["goals"] = goals(model)
            results["models"].append(model)
    results["load_average"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    Console().print(render(results))
    out = args.out  # nothing tracked is rewritten unless asked for
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "suite.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "suite.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
