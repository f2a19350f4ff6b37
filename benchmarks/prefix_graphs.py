"""Prefix graphs: a calibrated chain whose first exits are disabled runs their bodies and
the first enabled segment as one graph (``segments[k].prefix``), one ONNX Runtime call
where the bodies took one each.

For each model, in one process, batch 1, 1 thread, ``--instances`` independently loaded
copies of every method, alternating in a new shuffled order every round, in the cold and
stream regimes of benchmarks/disabled_exits.py (same timing code):

  bodies       Runtime.run on the calibrated bundle without its prefix graphs: a body per
               disabled exit, then the segments (the chain before prefix graphs)
  prefix       Runtime.run on the same bundle with them: the prefix graph, then the rest

Two calibrations per model: exit 0 disabled, exit 1 enabled (prefix_01 replaces body 0 and
segment 1), and exits 0 and 1 disabled, exit 2 enabled (prefix_02 replaces three calls).
The sample either leaves at that first enabled exit (threshold 0: every sample leaves
there) or runs to the last (a threshold no score reaches). Reported: the median per call
and the paired ratio prefix / bodies with its 95 % interval.

Usage:
  PYTHONPATH=. python benchmarks/prefix_graphs.py [--rounds 600] [--instances 3] [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

from benchmarks.disabled_exits import MODELS, REGIMES, summary, time_rounds

INF = math.inf
NEVER = 2.0  # above every score edgeexit exports (confidence is at most 1): no sample leaves


def cases(num_exits: int) -> dict[str, tuple[float, ...]]:
    """Thresholds per case: the first enabled exit k, every sample leaving there or none."""
    found = {}
    for k in (1, 2):
        if k >= num_exits - 1:
            continue
        for label, value in (
            (f"leaves at exit {k}", 0.0),
            (f"exit {k} enabled, to the last", NEVER),
        ):
            found[label] = tuple(value if i == k else INF for i in range(num_exits))
    return found


def prepare(make, folder: Path):
    """(bundle as exported, the same without prefix graphs, inputs) for one model."""
    import numpy as np
    import torch

    from edgeexit import export

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, inputs = make()
    example = tuple(torch.from_numpy(np.concatenate([a, a])) for a in inputs)
    export(model, example, folder / "prefix", validate=False)
    shutil.copytree(folder / "prefix", folder / "bodies")
    doc = json.loads((folder / "bodies" / "manifest.json").read_text())
    for segment in doc["segments"]:
        segment.pop("prefix", None)
    (folder / "bodies" / "manifest.json").write_text(json.dumps(doc))
    return folder / "prefix", folder / "bodies", inputs


def methods(prefix: Path, bodies: Path, thresholds: tuple[float, ...], inputs: list) -> dict:
    import numpy as np

    from edgeexit.bundle import read_manifest, write_manifest
    from edgeexit.runtime import Runtime

    for bundle in (prefix, bodies):
        write_manifest(bundle, read_manifest(bundle).with_thresholds(thresholds))
    with_prefix, without = Runtime(prefix, threads=1), Runtime(bodies, threads=1)
    k = next(i for i, t in enumerate(thresholds) if t != INF)
    assert with_prefix.prefix_exit == k and without.prefix_exit is None
    a, b = with_prefix.run(inputs), without.run(inputs)
    assert a.exit_index.tolist() == b.exit_index.tolist()
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    return {"bodies": lambda: without.run(inputs), "prefix": lambda: with_prefix.run(inputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--instances", type=int, default=3,
                        help="independently loaded copies of every method")  # fmt: skip
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict = {}
    for label, make in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            prefix, bodies, inputs = prepare(make, Path(tmp))
            from edgeexit.bundle import read_manifest

            for case, thresholds in cases(read_manifest(prefix).num_exits).items():
                instances = [methods(prefix, bodies, thresholds, inputs)
                             for _ in range(args.instances)]  # fmt: skip
                rows = results.setdefault(label, {}).setdefault(case, {})
                for regime, (lead, _) in REGIMES.items():
                    rows[regime] = summary(time_rounds(instances, args.rounds, lead, set()),
                                           base="bodies")  # fmt: skip
                    r, base = rows[regime]["prefix"], rows[regime]["bodies"]
                    low, high = r["ci95"]
                    print(f"{label}, {case}, {regime}: bodies {base['median_us']:.1f} us, "
                          f"prefix {r['median_us']:.1f} us: {r['paired_ratio']:.3f}x "
                          f"({low:.3f}-{high:.3f})", flush=True)  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
