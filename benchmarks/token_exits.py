"""Per-token exits: their speed-up at a stated token agreement, measured side by side.

Runs `edgeexit demo --tokens` (edgeexit/examples/tokens.py, run_token_demo): trains the
token tagger (4 encoder layers, dim 64, 64 tokens, a per-token exit after each layer; half
the tokens are labelled by their id alone, the others by whether their id occurs at least
three times in the sequence) for a few seconds, exports it with ``output="tokens"``,
calibrates it as `edgeexit calibrate --max-accuracy-drop` does for such a bundle (each
candidate shared threshold run and timed on half of 200 calibration sequences, the
fastest within the per-token agreement kept and checked on the other half), then runs
200 test sequences at batch 1 as deployed and with no early exit, alternating call by
call in a shuffled order, for --rounds rounds, in one process with 1 thread.

Reported: tokens/s of each, the speed-up (median of per-round ratios), the per-token
agreement with the full model and the accuracy on the test split, and where tokens left.

    PYTHONPATH=. python benchmarks/token_exits.py [--rounds 5] [--min-agreement 0.98]
        [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-agreement", type=float, default=0.98)
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    from edgeexit.examples.tokens import run_token_demo

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        demo = run_token_demo(Path(tmp) / "demo", min_agreement=args.min_agreement,
                              rounds=args.rounds)  # fmt: skip
        Console(width=110).print(demo)
    if args.save:
        doc = demo.to_json()
        del doc["out_dir"]  # a temporary folder, gone
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
