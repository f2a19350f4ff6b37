"""What the chained runtime costs over one monolithic ONNX graph of the same network.

For each model: export the bundle (4 segments) and the monolithic graph (every exit head
as an output) with the exporter, open both with the same session options (1 thread, the
x86-cpu target's settings), and time batch-1 calls on real digits, alternating the
methods in a shuffled order every round in one process. Reported: medians, p10/p90, and
the chain/monolithic ratio of medians.

Methods:
  chain          Runtime.run forced to the last exit (thresholds all inf): what a user calls
  chain-scored   Runtime.run with finite thresholds no sample reaches: every exit's score
                 is read and compared, nobody leaves
  chain-raw      the 4 segments' run_with_iobinding back to back, no Python around them:
                 the ONNX Runtime floor of a 4-segment chain
  mono-bound     the monolithic graph with IOBinding, input staged, outputs pre-bound,
                 last logits copied out (the fastest way to call it): the baseline
  mono-run       the monolithic graph with plain InferenceSession.run

Usage:
  PYTHONPATH=. python benchmarks/runtime_overhead.py [--rounds 3000] [--quick]
Writes benchmarks/results/runtime_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
# name -> digits_resnet width. 16 is the shipped example; 48 is the same network at the
# ~0.2 ms the issue sizes its bound for; 224 is wide enough to take > 5 ms at batch 1.
MODELS = {"digits_resnet w=16": 16, "digits_resnet w=48": 48, "digits_resnet w=224": 224}
BOUNDS = {"digits_resnet w=16": 1.05, "digits_resnet w=48": 1.05, "digits_resnet w=224": 1.02}


def export_pair(width: int, out: Path) -> tuple[Path, Path]:
    import torch

    from edgeexit import export
    from edgeexit.examples import digits_resnet
    from edgeexit.export import export_monolithic

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = digits_resnet(width=width).eval()
    example = torch.rand(2, 1, 8, 8)
    export(model, example, out / "bundle", validate=False)
    mono = export_monolithic(model, example, out / "mono.onnx")
    return out / "bundle", mono


def methods(bundle: Path, mono_path: Path, x: np.ndarray) -> dict[str, Callable[[], object]]:
    from edgeexit.runtime import Runtime
    from edgeexit.runtime.buffers import bound_runner
    from edgeexit.runtime.session import session_options

    rt = Runtime(bundle, threads=1)
    assert all(math.isinf(t) for t in rt.manifest.thresholds)  # as exported: forced last
    unreachable = [2.0] * (rt.num_exits - 1) + [math.inf]  # confidence is at most 1
    rt.run(x)  # binds the batch-1 steps
    segment_runs = [rt._chain.step(i, 1).run for i in range(rt.num_exits)]

    mono = ort.InferenceSession(
        str(mono_path), session_options(rt.config), providers=list(rt.config.providers)
    )
    feeds = {mono.get_inputs()[0].name: x}
    outputs = mono.run(None, feeds)
    names = [o.name for o in mono.get_outputs()]
    last = names.index(f"logits_{rt.num_exits - 1}")
    stage, buffers = np.empty_like(x), [np.empty_like(o) for o in outputs]
    io = mono.io_binding()
    io.bind_input(mono.get_inputs()[0].name, "cpu", 0, x.dtype, x.shape, stage.ctypes.data)
    for name, buf in zip(names, buffers):
        io.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)

    mono_run = bound_runner(mono, io, ort.RunOptions())  # the chain's own cheapest call

    def mono_bound():
        stage[:] = x
        mono_run()
        return buffers[last].copy()

    def chain_raw():
        for run in segment_runs:
            run()

    return {
        "chain": lambda: rt.run(x),
        "chain-scored": lambda: rt.run(x, thresholds=unreachable),
        "chain-raw": chain_raw,
        "mono-bound": mono_bound,
        "mono-run": lambda: mono.run(None, feeds),
    }


def time_alternating(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, np.ndarray]:
    order, times = list(fns), {name: np.empty(rounds) for name in fns}
    rng = random.Random(0)
    for fn in fns.values():  # warm up: arenas, caches, branch predictors
        for _ in range(50):
            fn()
    for r in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            t = time.perf_counter()
            fn()
            times[name][r] = time.perf_counter() - t
    return times


def summarize(times: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Medians, and two ratios to mono-bound: of the medians, and the median of the
    per-round ratios (each round runs every method back to back, so pairing cancels the
    slow drifts of a shared machine)."""
    base = times["mono-bound"]
    return {
        name: {
            "median_us": float(np.median(t)) * 1e6,
            "p10_us": float(np.percentile(t, 10)) * 1e6,
            "p90_us": float(np.percentile(t, 90)) * 1e6,
            "ratio_vs_mono_bound": float(np.median(t) / np.median(base)),
            "paired_ratio_vs_mono_bound": float(np.median(t / base)),
        }
        for name, t in times.items()
    }


def render(results: dict) -> Table:
    table = Table(title="chain vs monolithic, batch 1, 1 thread (medians)")
    for col in ("model", "method", "median µs", "p10–p90 µs", "×mono", "×mono paired", "goal"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for model, rows in results["models"].items():
        for method, row in rows.items():
            table.add_row(
                model,
                method,
                f"{row['median_us']:.1f}",
                f"{row['p10_us']:.1f}–{row['p90_us']:.1f}",
                f"{row['ratio_vs_mono_bound']:.3f}",
                f"{row['paired_ratio_vs_mono_bound']:.3f}",
                verdict(model, method, row),
            )
    return table


def verdict(model: str, method: str, row: dict[str, float]) -> str:
    if method != "chain":
        return ""
    ok = row["paired_ratio_vs_mono_bound"] <= BOUNDS[model]
    return f"<= {BOUNDS[model]}: {'met' if ok else 'NOT met'}"


def markdown(results: dict) -> str:
    lines = [
        "# Runtime overhead: 4-segment chain vs one monolithic graph",
        "",
        f"Machine: {results['machine']}; onnxruntime {results['onnxruntime']}; "
        f"{results['rounds']} alternating rounds (1/4 of them for w=224), batch 1, "
        f"1 intra-op thread; load average during the run {results['load_average']}.",
        "",
        "| model | method | median µs | p10–p90 µs | × mono | × mono, paired | goal |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for model, rows in results["models"].items():
        for method, r in rows.items():
            lines.append(
                f"| {model} | {method} | {r['median_us']:.1f} | "
                f"{r['p10_us']:.1f}–{r['p90_us']:.1f} | {r['ratio_vs_mono_bound']:.3f} | "
                f"{r['paired_ratio_vs_mono_bound']:.3f} | {verdict(model, method, r)} |"
            )
    lines += ["", "Reproduce: `PYTHONPATH=. python benchmarks/runtime_overhead.py`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="300 rounds, for a smoke run")
    args = parser.parse_args()
    rounds = 300 if args.quick else args.rounds
    from edgeexit.examples import load_digits

    x = np.ascontiguousarray(load_digits().test.x[:1])
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "onnxruntime": ort.__version__,
        "rounds": rounds,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, width in MODELS.items():
            out = Path(tmp) / f"w{width}"
            bundle, mono = export_pair(width, out)
            # the bigger model gets fewer rounds: its medians settle sooner
            n = rounds if width <= 64 else max(100, rounds // 4)
            results["models"][name] = summarize(time_alternating(methods(bundle, mono, x), n))
    results["load_average"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    Console().print(render(results))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "runtime_overhead.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
