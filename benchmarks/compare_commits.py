"""Did a change make the runtime slower? The overhead benchmark, run on two commits in turn.

Absolute times on a shared machine drift by 2x between minutes, so a figure from an earlier
day cannot judge a change. This runs benchmarks/runtime_overhead.py's timing on a base
commit (a temporary git worktree) and on the working tree, alternating them run by run
(base, work, work, base, ...), and compares each method's paired ratio to the monolithic
graph (mono-bound) measured in the same process: that ratio cancels the machine's speed,
and alternating the commits cancels its drift. Reported per model and method: the median
ratio of each commit, and work/base (> 1: the working tree is slower).

Usage:
  PYTHONPATH=. python benchmarks/compare_commits.py BASE [--runs 6] [--rounds 1000]
      [--models w=16,w=48]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeexit.measure.rounds import round_order

ROOT = Path(__file__).parents[1]
METHODS = ("chain", "chain-scored")

# Runs inside one tree (PYTHONPATH), with that tree's runtime and benchmark code.
PROBE = """
import json, sys, tempfile
from pathlib import Path
from benchmarks import runtime_overhead as b
rounds, wanted = int(sys.argv[1]), sys.argv[2].split(",")
out = {}
with tempfile.TemporaryDirectory() as tmp:
    for k, (name, case) in enumerate(b.MODELS.items()):
        if not any(w in name for w in wanted):
            continue
        bundle, mono = b.export_pair(case, Path(tmp) / f"m{k}")
        instances = [b.methods(bundle, mono, case.inputs()) for _ in range(3)]
        rows = b.summarize(b.time_alternating(instances, rounds))
        out[name] = {m: r["paired_ratio_vs_mono_bound"] for m, r in rows.items()}
print(json.dumps(out))
"""


def probe(tree: Path, rounds: int, models: str) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(rounds), models],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare the working tree against")
    parser.add_argument("--runs", type=int, default=6, help="runs per commit, alternating")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--models", default="w=16,w=48")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base],
            cwd=ROOT,
            check=True,
        )
        try:
            trees = {"base": base_tree, "work": ROOT}
            ratios: dict[str, list] = {"base": [], "work": []}
            for r in range(args.runs):
                for name in round_order(list(trees), r):
                    ratios[name].append(probe(trees[name], args.rounds, args.models))
                    print(f"{name} run {r + 1}/{args.runs}", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
    table = Table(title=f"runtime overhead: working tree vs {args.base} ({args.runs} runs each)")
    for col in ("model", "method", "base / mono", "work / mono", "work / base"):
        table.add_column(col, justify="right")
    for model in ratios["base"][0]:
        for method in METHODS:
            base = float(np.median([run[model][method] for run in ratios["base"]]))
            work = float(np.median([run[model][method] for run in ratios["work"]]))
            table.add_row(model, method, f"{base:.3f}", f"{work:.3f}", f"{work / base:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
