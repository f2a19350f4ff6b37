"""Disabled exits cost nothing: a chain whose every early exit is "never" against the plain
network (every block, then the last exit's head, as one ONNX graph).

For each model, in one process, batch 1, 1 thread, the methods alternating in a new
shuffled order every round (``measure.rounds``):

  plain        the plain network as one graph with IOBinding (PlainGraph): the baseline
  bodies       Runtime.run on the bundle as exported (every early exit disabled): each
               disabled segment runs as its body, the block without its head
  heads        the same bundle with every head run (a Runtime that may not use bodies):
               what the chain cost before

Models: the digits ResNet (w=64: cheap convolutional heads) and a transformer with heavy
heads (tiny_bert's encoder, d=256 t=96, each early exit an attention block + MLP before
pooling, as LGViT's heads are). Reported: the median per call and the paired ratio to
``plain`` (median over rounds of each round's ratio) with its 95 % interval; the goal is
<= 1.03x.

Usage:
  PYTHONPATH=. python benchmarks/disabled_exits.py [--rounds 2000] [--save F.json]
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
    """(bundle, bundle without bodies, plain graph, inputs) for one model."""
    import torch

    from edgeexit import export
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
    heads = folder / "heads"
    shutil.copytree(folder / "bundle", heads)
    doc = json.loads((heads / "manifest.json").read_text())
    for segment in doc["segments"]:
        segment.pop("body", None)
    (heads / "manifest.json").write_text(json.dumps(doc))
    return folder / "bundle", heads, folder / "plain.onnx", inputs


def methods(bundle: Path, heads: Path, plain: Path, inputs: list[np.ndarray]) -> dict:
    from edgeexit.runtime import Runtime
    from edgeexit.runtime.buffers import bound_runner
    from edgeexit.runtime.session import session_options

    bodies, every_head = Runtime(bundle, threads=1), Runtime(heads, threads=1)
    assert bodies._headless and not every_head._headless
    session = ort.InferenceSession(str(plain), session_options(bodies.config),
                                   providers=list(bodies.config.providers))  # fmt: skip
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, dict(zip(names, inputs)))[0]
    stages, result = [np.empty_like(a) for a in inputs], np.empty_like(out)
    io = session.io_binding()
    for name, stage in zip(names, stages):
        io.bind_input(name, "cpu", 0, stage.dtype, stage.shape, stage.ctypes.data)
    io.bind_output("logits", "cpu", 0, result.dtype, result.shape, result.ctypes.data)
    run = bound_runner(session, io, ort.RunOptions())

    def plain_bound():
        for stage, a in zip(stages, inputs):
            stage[:] = a
        run()
        return result.copy()

    np.testing.assert_allclose(bodies.run(inputs).logits, plain_bound(), atol=1e-4)
    return {
        "plain": plain_bound,
        "bodies": lambda: bodies.run(inputs),
        "heads": lambda: every_head.run(inputs),
    }


def time_rounds(fns: dict, rounds: int) -> dict[str, np.ndarray]:
    for fn in fns.values():
        for _ in range(50):
            fn()
    times = {name: np.empty(rounds) for name in fns}
    for r, order in enumerate(shuffled_orders(list(fns.items()), rounds)):
        for name, fn in order:
            t = time.perf_counter()
            fn()
            times[name][r] = time.perf_counter() - t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = {}
    for label, make in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            fns = methods(*prepare(make, Path(tmp)))
            times = time_rounds(fns, args.rounds)
        rows = {}
        for name, t in times.items():
            paired = t / times["plain"]
            low, high = median_interval(paired)
            rows[name] = {
                "median_us": float(np.median(t)) * 1e6,
                "paired_ratio": float(np.median(paired)),
                "ci95": [low, high],
            }
        results[label] = rows
        print(label)
        for name, r in rows.items():
            goal = ""
            if name == "bodies":
                goal = "  goal <= 1.03x: " + ("met" if r["paired_ratio"] <= GOAL else "NOT met")
            print(f"  {name:7s} {r['median_us']:9.1f} us  {r['paired_ratio']:.3f}x plain "
                  f"({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}){goal}")  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
