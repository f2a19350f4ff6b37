"""Where Runtime.run's own cold microseconds go, on the digits ResNet (w=64) as exported.

One bundle, one Runtime; every method below calls the Runtime's own session of the plain
graph (so no load's luck enters), each timed call right after one call of every method of
two other loaded copies (the cold regime of benchmarks/disabled_exits.py). Each method adds
one piece of Runtime.run's deployed path to the bare call; reported: the median extra
microseconds over the bare call, paired round by round, with its 95 % interval.

  bare        stage the input, run the bound session, copy the logits out
  + lock      the same inside the Runtime's lock
  + plan      the plan looked up by Chain.known_plan first
  + result    a Result made
  + clock     three perf_counter readings into a stamps list
  + sum       the graph's input sum read and tested
  + 2 frames  the bare call behind two Python function calls that do nothing else
  inlined     every piece above in one function: what Runtime.run could cost at best
  run         Runtime.run itself

Usage:
  PYTHONPATH=. python benchmarks/cold_call.py [--rounds 1500]
"""

from __future__ import annotations

import argparse
import tempfile
from math import isfinite
from pathlib import Path
from time import perf_counter

import numpy as np

from benchmarks.disabled_exits import digits_resnet, methods, prepare, time_after_others
from edgeexit.measure.rounds import median_interval


def pieces(runtime, inputs: list) -> dict:
    chain = runtime._chain
    plan = chain.plan(inputs[0].shape)
    (run,) = plan.runs
    stage, logits, total, lock = plan.stage, plan.logits, plan.input_sum, runtime._lock
    make_result, before = runtime._result, runtime._stamps_before
    energy, power = runtime._energy, runtime._power_w

    def bare():
        for view, x in zip(stage, inputs):
            view[...] = x
        run()
        return logits.copy()

    def locked():
        with lock:
            return bare()

    def looked_up():
        found = chain.known_plan(inputs)
        for view, x in zip(found.stage, inputs):
            view[...] = x
        run()
        return found.logits.copy()

    def with_result():
        result = make_result(None, plan.exit_index, energy, None, None, power, None, None, None)
        result.logits = bare()
        return result

    def clocked():
        stamps = before[:]
        stamps.append(perf_counter())
        stamps.append(perf_counter())
        out = bare()
        stamps.append(perf_counter())
        return out

    def summed():
        out = bare()
        if not isfinite(total[0]):
            raise ValueError("NaN")
        return out

    def outer():
        return inner()

    def inner():
        return bare()

    def inlined():
        with lock:
            t0 = perf_counter()
            x = inputs[0]
            found = chain.plans.get(x.shape)
            if found is None or x.dtype is not found.inputs[0][0]:
                raise ValueError("not the known plan")
            stamps = before[:]
            result = make_result(None, found.exit_index, energy, None, None, power, None,
                                 stamps, t0)  # fmt: skip
            for view, a in zip(found.stage, inputs):
                view[...] = a
            mark = stamps.append
            mark(perf_counter())
            for step in found.runs:
                step()
                mark(perf_counter())
            if not isfinite(found.input_sum[0]):
                raise ValueError("NaN")
            result.logits = found.logits.copy()
            return result

    return {"bare": bare, "+ lock": locked, "+ plan": looked_up, "+ result": with_result,
            "+ clock": clocked, "+ sum": summed, "+ 2 frames": outer, "inlined": inlined,
            "run": lambda: runtime.run(inputs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1500)
    args = parser.parse_args()
    from edgeexit.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(digits_resnet, Path(tmp))
        inputs = prepared[-1]
        others = [fn for _ in range(2) for name, fn in methods(*prepared).items()
                  if name != "its session"]  # fmt: skip
        runtime = Runtime(prepared[0], threads=1)
        assert runtime.runs_plain_graph
        calls = pieces(runtime, inputs)
        for fn in (*calls.values(), *others):
            for _ in range(50):
                fn()
        names = list(calls)
        times = time_after_others(list(calls.values()), others, args.rounds)
    print(f"digits ResNet w=64, cold, {args.rounds} rounds: extra us over the bare call")
    for j, name in enumerate(names):
        extra = (times[:, j] - times[:, 0]) * 1e6
        low, high = median_interval(extra)
        print(f"  {name:11s} {np.median(times[:, j]) * 1e6:7.1f} us  "
              f"{np.median(extra):+5.1f} ({low:+.1f}..{high:+.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
