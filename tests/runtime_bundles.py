"""Bundles for the runtime tests: tiny example models exported once per test session.

Every bundle is exported with the real exporter (``edgeexit.export``) from a seeded model,
and kept with the model so tests can compute PyTorch references.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(tempfile.mkdtemp(prefix="edgeexit-runtime-tests-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)


@dataclass(frozen=True)
class Exported:
    bundle: Path
    model: object  # the torch MultiExit, in eval mode
    inputs: tuple[np.ndarray, ...]  # a batch of test inputs in the manifest's order


@functools.cache
def exported(name: str, criterion: str = "confidence", batch: int = 24) -> Exported:
    import torch

    from edgeexit import export
    from edgeexit.examples.models import EXAMPLE_MODELS, example_inputs

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = EXAMPLE_MODELS[name]().eval()
    out = ROOT / f"{name}-{criterion}"
    export(model, example_inputs(name), out, criterion=criterion, validate=False)
    inputs = tuple(t.numpy() for t in example_inputs(name, batch=batch, seed=1))
    if name != "tiny_bert":  # spread the scores: random-weight nets are rarely confident
        inputs = tuple((x * 4 - 2).astype(np.float32) for x in inputs)
    return Exported(out, model, inputs)


def torch_exit_logits(model, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """PyTorch's logits at every exit: [num_exits, N, C]."""
    import torch

    from edgeexit.export import run_exits

    with torch.no_grad():
        steps = run_exits(model, [torch.from_numpy(x) for x in inputs])
    return np.stack([s.logits.float().numpy() for s in steps])


def without_plain_graph(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose manifest lists no plain graph: its runtime runs the chain of
    segments (bodies for the disabled exits) even when every early exit is disabled."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    for segment in doc["segments"]:
        segment.pop("plain", None)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
