"""Disabled exits cost nothing: a chain whose every early exit is "never" against the plain
network (every block, then the last exit's head, as one ONNX graph).

For each model, in one process, batch 1, 1 thread, ``--instances`` independently loaded
copies of every method (two loads of one graph can differ by a few per cent: where the
arena and weights land), all alternating in a new shuffled order every round
(``measure.rounds``); a method's time in a round is the mean over its copies:

  plain        the plain network as one graph with IOBinding (PlainGraph, exported from
               PyTorch on its own): the baseline
  plain run()  the same graph called as most deployments call it (session.run with a
               feed dict, outputs allocated by ONNX Runtime): context, not the goal
  bundle       Runtime.run on the bundle as exported (every early exit disabled): it runs
               the bundle's plain graph, the bodies and the last segment joined (one call)
  bodies       the same bundle without its plain graph: each disabled segment runs as its
               body, the block without its head (one call per segment)
  heads        the same bundle with every head run (no bodies, no plain graph): what the
               chain cost before
  its graph    the bundle's plain graph run bare like ``plain``: what the graph costs,
               without Runtime.run's own work
  its session  the bundle's own session of that graph (the one Runtime.run calls), run
               bare like ``plain``: bundle / its session is Runtime.run's own work alone,
               without the difference two loads of one graph can make (~1 %). Stream
               regime only: timed cold, it would warm the bundle's weights for it
  one exit     Runtime.run on a bundle of the plain network as one segment with one exit:
               what Runtime.run itself costs over the bare graph (input checks, NaN
               refusal, the result), with no early exit at all

Two regimes, each its own pass of shuffled rounds:

  cold     one timed call per method per round, right after other methods' calls: every
           byte of the method's weights, code and Python objects has been pushed out of
           the caches by the others (the regime the earlier figures used)
  stream   the same, but each timed call right after an untimed call of the same method:
           a deployed model serving a stream of requests, its weights and the runtime's
           code as its own previous call left them

Python's per-call work weighs on a cold call far more than on a warm one (docs/runtime.md,
*Where the rest goes*), so the two bracket what a deployment sees. Last, on one copy:
Runtime.run against its own session run bare, each call right after one call of every
method of the other copies, in microseconds (what Runtime.run itself adds to a cold call,
free of the load's luck).

Models: the digits ResNet (w=64: cheap convolutional heads) and a transformer with heavy
heads (tiny_bert's encoder, d=256 t=96, each early exit an attention block + MLP before
pooling, as LGViT's heads are). Reported per regime: the median per call and the paired
ratio to ``plain`` (median over rounds of each round's ratio) with its 95 % interval; the
goal is <= 1.03x.

Usage:
  PYTHONPATH=. python benchmarks/disabled_exits.py [--rounds 1000] [--instances 3] [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeexit.measure.rounds import median_interval, shuffled_orders

GOAL = 1.03


def heavy_head_transformer():
    import torch
    from torch import nn

    from edgeexit.examples.models import EncoderLayer, MeanPoolHead, tiny_bert

    class HeavyHead(nn.Module):
        def __init__(self, dim: int, heads: int, classes: int) -> None:
            super().__init__()
            self.block, self.pool = EncoderLayer(dim, heads), MeanPoolHead(dim, classes)

        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.pool(*self.block(h, mask))

    model = tiny_bert(num_classes=4, vocab_size=1000, seq_len=96, dim=256, heads=4, layers=4)
    heavy = [HeavyHead(256, 4, 4) for _ in model.exits[:-1]]
    model.exits = nn.ModuleList([*heavy, model.exits[-1]])
    ids = np.random.default_rng(0).integers(1, 1000, (1, 96), dtype=np.int64)
    return model.eval(), [ids, np.ones((1, 96), dtype=np.int64)]


def digits_resnet():
    from edgeexit.examples import load_digits
    from edgeexit.examples.models import digits_resnet as resnet

    return resnet(width=64).eval(), [np.ascontiguousarray(load_digits().test.x[:1])]


MODELS = {"digits_resnet w=64": digits_resnet, "transformer, heavy heads": heavy_head_transformer}


def prepare(make, folder: Path):
    """(bundle, bundle without a plain graph, bundle without bodies either, a one-exit
    bundle of the plain network, the plain network's graph, inputs) for one model."""
    import torch

    from edgeexit import MultiExit, export
    from edgeexit.export.convert import export_graph
    from edgeexit.export.graphs import PlainGraph

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, inputs = make()
    example = tuple(torch.from_numpy(np.concatenate([a, a])) for a in inputs)
    export(model, example, folder / "bundle", validate=False)
    names = [f"input_{k}" for k in range(len(inputs))]
    export_graph(PlainGraph(model), example, folder / "plain.onnx", names, ["logits"],
                 opset=17, exporter="auto")  # fmt: skip
    variants = {"bodies": ("plain",), "heads": ("plain", "body")}
    for name, dropped in variants.items():
        shutil.copytree(folder / "bundle", folder / name)
        doc = json.loads((folder / name / "manifest.json").read_text())
        for segment in doc["segments"]:
            for key in dropped:
                segment.pop(key, None)
        (folder / name / "manifest.json").write_text(json.dumps(doc))
    one_exit = MultiExit([Blocks(model.segments)], [model.exits[-1]])
    export(one_exit, example, folder / "one_exit", validate=False)
    bundles = [folder / name for name in ("bundle", "bodies", "heads", "one_exit")]
    return (*bundles, folder / "plain.onnx", inputs)


def Blocks(segments):  # noqa: N802 (a module factory, named as the module it makes)
    """Every segment in turn, as one segment."""
    from torch import nn

    from edgeexit.export.model import as_carry

    class Sequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.segments = segments

        def forward(self, *carry):
            for i, segment in enumerate(self.segments):
                carry = as_carry(segment(*carry), f"segments[{i}]")
            return carry

    return Sequence()


def methods(
    bundle: Path, no_plain: Path, heads: Path, one_exit: Path, plain: Path, inputs: list
) -> dict:
    from edgeexit.runtime import Runtime
    from edgeexit.runtime.buffers import bound_runner
    from edgeexit.runtime.session import session_options

    deployed, bodies = Runtime(bundle, threads=1), Runtime(no_plain, threads=1)
    every_head, alone = Runtime(heads, threads=1), Runtime(one_exit, threads=1)
    assert deployed.runs_plain_graph and bodies.bodies_in_use and not bodies.runs_plain_graph
    assert not every_head.bodies_in_use

    def bare(graph: Path):
        """``graph`` run as cheaply as Python allows: inputs staged, IOBinding, a copy."""
        session = ort.InferenceSession(str(graph), session_options(deployed.config),
                                       providers=list(deployed.config.providers))  # fmt: skip
        names = [i.name for i in session.get_inputs()]
        out = session.run(None, dict(zip(names, inputs)))[0]
        stages, result = [np.empty_like(a) for a in inputs], np.empty_like(out)
        io = session.io_binding()
        for name, stage in zip(names, stages):
            io.bind_input(name, "cpu", 0, stage.dtype, stage.shape, stage.ctypes.data)
        io.bind_output(session.get_outputs()[0].name, "cpu", 0, result.dtype, result.shape,
                       result.ctypes.data)  # fmt: skip
        run = bound_runner(session, io, ort.RunOptions())

        def call():
            for stage, a in zip(stages, inputs):
                stage[:] = a
            run()
            return result.copy()

        return call

    def standard(graph: Path):
        """``graph`` as most deployments call it: ``InferenceSession.run`` with a feed dict."""
        session = ort.InferenceSession(str(graph), session_options(deployed.config),
                                       providers=list(deployed.config.providers))  # fmt: skip
        feeds = dict(zip([i.name for i in session.get_inputs()], inputs))
        return lambda: session.run(None, feeds)[0]

    plain_bound = bare(plain)
    joined = bundle / deployed.manifest.segments[-1].plain.file
    joined_bound = bare(joined)

    np.testing.assert_allclose(deployed.run(inputs).logits, plain_bound(), atol=1e-4)
    # one graph: ONNX Runtime may fuse across the former segment boundaries (float rounding)
    np.testing.assert_allclose(deployed.run(inputs).logits, bodies.run(inputs).logits, atol=1e-5)

    def own_session():
        """The deployed Runtime's own session of the plain graph, with nothing around it."""
        plan = deployed._chain.plan(inputs[0].shape)
        (run,) = plan.runs

        def call():
            for stage, a in zip(plan.stage, inputs):
                stage[...] = a
            run()
            return plan.logits.copy()

        return call

    return {
        "plain": plain_bound,
        "plain run()": standard(plain),
        "bundle": lambda: deployed.run(inputs),
        "its graph": joined_bound,
        "its session": own_session(),
        "bodies": lambda: bodies.run(inputs),
        "heads": lambda: every_head.run(inputs),
        "one exit": lambda: alone.run(inputs),
    }


# regime: (untimed calls of the same method before each timed one, methods left out)
REGIMES = {"cold": (0, {"its session"}), "stream": (1, set())}


def time_rounds(
    instances: list[dict], rounds: int, lead: int, left_out: set[str]
) -> dict[str, np.ndarray]:
    """Seconds per call, [rounds, instances] per method: every round calls every method of
    every instance once (after ``lead`` untimed calls of it), in a new shuffled order."""
    calls = [(name, j, fn) for j, fns in enumerate(instances)
             for name, fn in fns.items() if name not in left_out]  # fmt: skip
    for _, _, fn in calls:
        for _ in range(50):
            fn()
    names = [name for name in instances[0] if name not in left_out]
    times = {name: np.empty((rounds, len(instances))) for name in names}
    for r, order in enumerate(shuffled_orders(calls, rounds)):
        for name, j, fn in order:
            for _ in range(lead):
                fn()
            t = time.perf_counter()
            fn()
            times[name][r, j] = time.perf_counter() - t
    return times


def summary(times: dict[str, np.ndarray], base: str = "plain") -> dict:
    """Per method: the median of each round's mean over instances, the paired ratio to
    ``base`` with its 95 % interval, and each instance's own median (their spread is
    what loading the same graph twice can change)."""
    plain = times[base].mean(axis=1)
    rows = {}
    for name, per_instance in times.items():
        paired = per_instance.mean(axis=1) / plain
        low, high = median_interval(paired)
        rows[name] = {
            "median_us": float(np.median(per_instance.mean(axis=1))) * 1e6,
            "paired_ratio": float(np.median(paired)),
            "ci95": [low, high],
            "instance_ratios": [
                float(np.median(per_instance[:, j] / plain)) for j in range(per_instance.shape[1])
            ],  # fmt: skip
        }
    return rows


def time_after_others(calls: list, others: list, rounds: int) -> np.ndarray:
    """Seconds per call, [rounds, calls]: every round times each of ``calls`` once, in a
    new shuffled order, each right after one call of every one of ``others`` (a cold call:
    they have pushed its code and data out of the caches)."""
    times = np.empty((rounds, len(calls)))
    for r, order in enumerate(shuffled_orders(list(enumerate(calls)), rounds)):
        for j, fn in order:
            for other in others:
                other()
            t = time.perf_counter()
            fn()
            times[r, j] = time.perf_counter() - t
    return times


def runtime_work(instances: list[dict], rounds: int) -> dict:
    """What Runtime.run adds to its own session's call, cold: the first copy's bundle and
    its session run bare, in a shuffled order, each right after one call of every method
    of the other copies (the neighbourhood a cold-regime call has). One session for both,
    so no load's luck enters."""
    bundle, bare = instances[0]["bundle"], instances[0]["its session"]
    others = [fn for fns in instances[1:] for name, fn in fns.items() if name != "its session"]
    times = time_after_others([bundle, bare], others, rounds)
    extra = (times[:, 0] - times[:, 1]) * 1e6
    low, high = median_interval(extra)
    return {"extra_us": float(np.median(extra)), "ci95_us": [low, high],
            "session_us": float(np.median(times[:, 1])) * 1e6}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3,
                        help="independently loaded copies of every method")  # fmt: skip
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = {}
    for label, make in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prepare(make, Path(tmp))
            instances = [methods(*prepared) for _ in range(args.instances)]
            results[label] = {
                regime: summary(time_rounds(instances, args.rounds, lead, left_out))
                for regime, (lead, left_out) in REGIMES.items()
            }
            work = runtime_work(instances, max(args.rounds // 4, 50))
        for regime, rows in results[label].items():
            print(f"{label}, {regime}")
            for name, r in rows.items():
                goal = ""
                if name == "bundle":
                    met = "met" if r["paired_ratio"] <= GOAL else "NOT met"
                    goal = f"  goal <= {GOAL}x: {met}"
                each = "/".join(f"{x:.3f}" for x in r["instance_ratios"])
                low, high = r["ci95"]
                print(f"  {name:11s} {r['median_us']:9.1f} us  {r['paired_ratio']:.3f}x plain "
                      f"({low:.3f}-{high:.3f}; instances {each}){goal}")  # fmt: skip
        results[label]["runtime work"] = work
        low, high = work["ci95_us"]
        print(f"{label}: Runtime.run's own work, cold, on one session of "
              f"{work['session_us']:.1f} us: +{work['extra_us']:.1f} us "
              f"({low:.1f}-{high:.1f})")  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
