"""What a depth cap saves on the device: resident memory with the chain capped at exit K.

Exports a transformer (tiny_bert scaled to ~8 MB of weights per segment, 4 segments) and,
for each cap K, loads ``Runtime(bundle, max_exit=K)`` in a fresh process, runs one batch,
and reads the process's resident memory (VmRSS) before and after: the growth is what the
runtime holds for the segments it opened. Linux only (/proc).

Usage:
  PYTHONPATH=. python benchmarks/max_exit_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
import json, sys
import numpy as np
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import edgeexit
from edgeexit.runtime import Runtime
before = rss_mb()
cap = None if sys.argv[2] == "none" else int(sys.argv[2])
rt = Runtime(sys.argv[1], threads=1, max_exit=cap)
ids = np.ones((1, 64), dtype=np.int64)
rt.run([ids, np.ones((1, 64), dtype=np.int64)])
print(json.dumps({"segments": rt.num_exits, "grew_mb": rss_mb() - before}))
"""


def main() -> None:
    import torch

    import edgeexit
    from edgeexit.examples import tiny_bert

    torch.manual_seed(0)
    model = tiny_bert(vocab_size=1000, seq_len=64, dim=512, heads=8, layers=4).eval()
    ids = torch.randint(1, 1000, (2, 64))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        edgeexit.export(model, (ids, torch.ones_like(ids)), bundle,
                        input_names=("input_ids", "attention_mask"), validate=False)  # fmt: skip
        sizes = [f.stat().st_size / 2**20 for f in sorted(bundle.glob("segment_*.onnx"))]
        rows = []
        for cap in [*range(len(sizes)), None]:
            out = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(cap).lower()],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            rows.append({"max_exit": cap, **json.loads(out.stdout.splitlines()[-1])})
    print(f"segment files (MB): {', '.join(f'{s:.1f}' for s in sizes)}")
    print("max_exit  segments  resident memory growth")
    for r in rows:
        cap = "none" if r["max_exit"] is None else str(r["max_exit"])
        print(f"{cap:>8}  {r['segments']:>8}  {r['grew_mb']:8.1f} MB")


if __name__ == "__main__":
    main()
