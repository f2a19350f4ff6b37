"""Export side figures, measured in one run so they compare as ratios:

- export wall time of the digits ResNet bundle (4 segments, validated) and of its
  monolithic graph;
- ONNX Runtime latency per sample (1 thread) of the monolithic graph and of the bundle's
  chain run to the last exit, at batch 1 and 64: the chain's cost of being split.

    PYTHONPATH=. python benchmarks/export_speed.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import edgeexit
from edgeexit.examples.models import digits_resnet
from edgeexit.export import export_monolithic


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ms_per_call(fn, repeats: int = 200) -> float:
    for _ in range(20):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = digits_resnet()
    x = torch.rand(2, 1, 8, 8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = edgeexit.export(model, x, Path(tmp) / "bundle")
        bundle_s = time.perf_counter() - start
        start = time.perf_counter()
        mono = session(export_monolithic(model, x, Path(tmp) / "whole.onnx"))
        mono_s = time.perf_counter() - start
        chain = [session(Path(tmp) / "bundle" / s.file) for s in result.manifest.segments]
        print(f"export: bundle {bundle_s:.2f} s (validated), monolithic {mono_s:.2f} s")
        for batch in (1, 64):
            feed = np.random.default_rng(0).random((batch, 1, 8, 8), dtype=np.float32)
            mono_ms = ms_per_call(lambda f=feed: mono.run(None, {"x": f}))
            chain_ms = ms_per_call(lambda f=feed: run_chain(chain, result.manifest, f))
            print(
                f"batch {batch:3d}: monolithic {mono_ms / batch:.4f} ms/sample, "
                f"chain to last exit {chain_ms / batch:.4f} ms/sample, "
                f"ratio {chain_ms / mono_ms:.2f}"
            )


def run_chain(sessions, manifest, x: np.ndarray) -> None:
    values = {"x": x}
    for seg, sess in zip(manifest.segments, sessions):
        names = [*seg.carry, seg.logits, seg.score]
        values = dict(zip(names, sess.run(names, {n: values[n] for n in seg.inputs})))


if __name__ == "__main__":
    main()
