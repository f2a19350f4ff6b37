"""Per-token exits: their speed-up at a stated token agreement, measured side by side.

Trains the token tagger of edgeexit/examples/tokens.py (4 encoder layers, dim 64, 64
tokens, a per-token exit after each layer; a synthetic task where half the tokens are
labelled by their id alone and the others need the context) for a few seconds, exports it
with ``output="tokens"``, then:

1. calibrates it on a calibration split (edgeexit.calibrate.tokens, what `edgeexit
   calibrate` does for such a bundle): the fastest of a list of shared thresholds whose
   per-token agreement with the full model (every token to the last exit) is at least
   --min-agreement on one half, each run and timed, checked on the other half;
2. runs the test split at batch 1 through the bundle with that threshold and without
   exits (every threshold never: every token through every segment), alternating call by
   call in a shuffled order, for --rounds rounds, in one process with 1 thread.

Reported: tokens/s of each, the speed-up (paired, median of per-round ratios), the
per-token agreement with the full model and the accuracy against the labels on the test
split, and where the tokens left.

    PYTHONPATH=. python benchmarks/token_exits.py [--rounds 5] [--min-agreement 0.99]
        [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path):
    import torch

    import edgeexit
    from edgeexit.examples.tokens import tagging_task, token_tagger, train_tagger

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = token_tagger()
    train = tagging_task(3000, seed=0)
    started = time.perf_counter()
    accuracies = train_tagger(model, *train, epochs=4)
    trained_s = time.perf_counter() - started
    example = tuple(torch.from_numpy(a[:2]) for a in train[:2])
    edgeexit.export(model, example, folder / "bundle", output="tokens")
    return folder / "bundle", accuracies, trained_s


def side_by_side(runtime, ids, mask, thresholds, rounds: int) -> dict:
    from edgeexit.measure.rounds import shuffled_orders

    runs = {"full": (np.inf,) * runtime.num_exits, "token exits": thresholds}
    seconds = {name: np.zeros(rounds) for name in runs}
    answers = {name: [None] * len(ids) for name in runs}
    for n in range(min(10, len(ids))):  # settle ONNX Runtime before anything is timed
        for t in runs.values():
            runtime.run([ids[n : n + 1], mask[n : n + 1]], thresholds=t)
    for r in range(rounds):
        for n, order in enumerate(shuffled_orders(list(runs), len(ids), seed=r)):
            for name in order:
                started = time.perf_counter()
                result = runtime.run([ids[n : n + 1], mask[n : n + 1]], thresholds=runs[name])
                seconds[name][r] += time.perf_counter() - started
                answers[name][n] = result
    return {"seconds": seconds, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    from edgeexit.budget import Budget
    from edgeexit.calibrate.tokens import calibrate_tokens
    from edgeexit.data import Dataset
    from edgeexit.examples.tokens import tagging_task
    from edgeexit.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        bundle, train_accuracy, trained_s = build(Path(tmp))
        runtime = Runtime(bundle, threads=1)
        cal_ids, cal_mask, _ = tagging_task(200, seed=1)
        budget = Budget(max_accuracy_drop=1 - args.min_agreement)
        report = calibrate_tokens(runtime, Dataset((cal_ids, cal_mask), None), budget)
        thresholds, threshold = report.thresholds, report.thresholds[0]
        ids, mask, labels = tagging_task(200, seed=2)
        measured = side_by_side(runtime, ids, mask, thresholds, args.rounds)
    full = np.stack([r.predictions[0] for r in measured["answers"]["full"]])
    early = [r for r in measured["answers"]["token exits"]]
    predictions = np.stack([r.predictions[0] for r in early])
    exits = np.stack([r.exit_index[0] for r in early])
    tokens = ids.size
    rates = {name: args.rounds * tokens / s.sum() for name, s in measured["seconds"].items()}
    ratios = measured["seconds"]["full"] / measured["seconds"]["token exits"]
    doc = {
        "train_seconds": trained_s,
        "train_accuracy_per_exit": train_accuracy,
        "min_agreement": args.min_agreement,
        "threshold": threshold,
        "calibration": report.to_json(),
        "tokens_per_s": rates,
        "speedup": float(np.median(ratios)),
        "speedup_per_round": ratios.tolist(),
        "test_agreement": float((predictions == full).mean()),
        "test_accuracy": {
            "full": float((full == labels).mean()),
            "token exits": float((predictions == labels).mean()),
        },  # fmt: skip
        "exit_shares": (np.bincount(exits.ravel(), minlength=4) / exits.size).tolist(),
        "rounds": args.rounds,
    }
    met = "met" if doc["test_agreement"] >= args.min_agreement else "MISSED"
    for p in report.sweep:
        print(f"  threshold {p.threshold:<7g} agreement {p.agreement:.2%}, {p.early_share:.1%} "
              f"of tokens leave early, {p.speedup:.2f}x (calibration, search half)")  # fmt: skip
    h = report.held_out
    print(f"threshold {threshold} (calibration held-out half: agreement {h.agreement:.2%}, "
          f"{'met' if report.held_out_met else 'MISSED'})")  # fmt: skip
    print(
        f"full         {rates['full']:9.0f} tokens/s   accuracy {doc['test_accuracy']['full']:.2%}"
    )
    print(f"token exits  {rates['token exits']:9.0f} tokens/s   accuracy "
          f"{doc['test_accuracy']['token exits']:.2%}")  # fmt: skip
    print(f"speed-up {doc['speedup']:.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"agreement with full on the test split {doc['test_agreement']:.2%} "
          f"(target {args.min_agreement:.0%}: {met}); tokens left at exits "
          f"{', '.join(f'{s:.1%}' for s in doc['exit_shares'])}")  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
