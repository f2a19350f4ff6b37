"""A token tagger whose tokens leave at their own exits (DToP, DyVTE): a small transformer
encoder with a per-token classifier after every layer, and a synthetic tagging task in
which some tokens are easy (their label follows from the token alone) and others need
context (whether the token occurs at least three times in its sequence: counting over
attention, which one layer does roughly and later ones better), so exits have something
to decide token by token. ``QUICK`` trains and measures less, for a run of well under a
minute.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text
from torch import nn

from edgeexit import files
from edgeexit.budget import Budget
from edgeexit.calibrate.tokens import TokenReport
from edgeexit.examples.models import Embeddings, EncoderLayer, FirstLayer
from edgeexit.examples.threads import one_torch_thread
from edgeexit.export.model import MultiExit
from edgeexit.measure.rounds import alternating_calls
from edgeexit.progress import Progress, or_silent

CONTEXT_CLASS = 3  # the label of a context token that occurs three times or more
QUICK = {"epochs": 2, "rounds": 1}  # run_token_demo's, for --quick


def tagging_task(
    n: int, *, seq_len: int = 64, vocab_size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask, labels)``, labels int64 [n, seq_len] in 0..3.

    A token below ``vocab_size / 2`` is labelled ``id % 3`` (easy: the token alone says);
    one above is labelled 3 when it occurs at least three times in its sequence, else
    ``id % 3`` (it needs the context)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(n, seq_len))
    counts = np.stack([np.bincount(row, minlength=vocab_size)[row] for row in ids])
    labels = ids % 3
    labels[(ids >= vocab_size // 2) & (counts >= 3)] = CONTEXT_CLASS
    mask = np.ones_like(ids)
    return ids.astype(np.int64), mask.astype(np.int64), labels.astype(np.int64)


class TokenHead(nn.Module):
    """Per-token logits from the hidden states: [batch, tokens, classes]."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


def token_tagger(
    vocab_size: int = 64, seq_len: int = 64, dim: int = 64, heads: int = 4, layers: int = 4
) -> MultiExit:
    """Embeddings + ``layers`` encoder layers, a per-token exit after each; the carry is
    (hidden [batch, tokens, dim], mask [batch, tokens]): the token axis second."""
    blocks = [EncoderLayer(dim, heads) for _ in range(layers)]
    segments = [FirstLayer(Embeddings(vocab_size, seq_len, dim), blocks[0]), *blocks[1:]]
    return MultiExit(segments, [TokenHead(dim, CONTEXT_CLASS + 1) for _ in segments],
                     output="tokens")  # fmt: skip


def train_tagger(
    model: MultiExit,
    ids: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 4,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[float]:
    """Every exit's per-token cross-entropy, summed; returns each exit's token accuracy.
    ``progress`` counts the batches ("training")."""
    tell = or_silent(progress)
    torch.manual_seed(seed)
    x, m, y = (torch.from_numpy(a) for a in (ids, mask, labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(x) // batch_size)
    tell("training, batch", 0, epochs * per_epoch)
    for epoch in range(epochs):
        for b, rows in enumerate(torch.randperm(len(x), generator=generator).split(batch_size)):
            outputs = model(x[rows], m[rows])
            loss = sum(nn.functional.cross_entropy(o.flatten(0, 1), y[rows].flatten())
                       for o in outputs)  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tell("training, batch", epoch * per_epoch + b + 1, epochs * per_epoch)
    model.eval()
    with torch.no_grad():
        outputs = model(x, m)
    return [float((o.argmax(-1) == y).float().mean()) for o in outputs]


@dataclass(frozen=True)
class TokenDemo:
    """The per-token-exit tagger, calibrated, against no early exit on a test split,
    measured side by side (batch 1, alternating call by call)."""

    out_dir: Path
    calibration: TokenReport
    train_accuracy: list[float]  # per exit, on the training data
    rows: list[dict[str, Any]]  # full and token exits: tokens/s, accuracy, exit shares
    speedup: float  # median over rounds of the per-round ratio
    speedup_per_round: list[float]
    agreement: float  # per-token agreement with the full model on the test split
    min_agreement: float

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "calibration": self.calibration.to_json(),
                "train_accuracy_per_exit": self.train_accuracy, "test": self.rows,
                "speedup": self.speedup, "speedup_per_round": self.speedup_per_round,
                "test_agreement": self.agreement, "min_agreement": self.min_agreement}  # fmt: skip

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.calibration
        table = Table(title=f"tagging the test split, measured ({platform.machine()}, batch 1)")
        for col in ("run", "tokens/s", "accuracy", "exit shares"):
            table.add_column(col, justify="right")
        for r in self.rows:
            table.add_row(r["run"], f"{r['tokens_per_s']:.0f}", f"{r['accuracy']:.2%}",
                          ", ".join(f"{s:.1%}" for s in r["exit_shares"]))  # fmt: skip
        met = "met" if self.agreement >= self.min_agreement else "MISSED"
        rounds = ", ".join(f"{r:.2f}" for r in self.speedup_per_round)
        table.caption = (
            f"speed-up {self.speedup:.2f}x (rounds {rounds}); per-token agreement with the "
            f"full model {self.agreement:.2%} (target {self.min_agreement:.0%}: {met}); "
            f"bundle: {self.out_dir / 'bundle'}"
        )
        yield table
        out = self.out_dir
        # (bench does not take per-token bundles yet)
        yield Text(f"next: edgeexit calibrate {out / 'bundle'} --data {out / 'calibration.npz'} "
                   "--max-accuracy-drop 0.05")  # fmt: skip


def run_token_demo(
    out_dir: Path,
    *,
    min_agreement: float = 0.98,
    epochs: int = 4,
    sequences: int = 3000,
    rounds: int = 3,
    progress: Progress | None = None,
) -> TokenDemo:
    """Train the tagger, export it with per-token exits, calibrate a shared threshold to
    ``min_agreement`` with the full model, and measure it against no early exit on 200
    test sequences, in ``out_dir`` (new, empty, or a demo's)."""
    from edgeexit.calibrate.pipeline import calibrate_bundle
    from edgeexit.export import export
    from edgeexit.runtime import Runtime

    tell = or_silent(progress)
    files.check_output(out_dir, "demo")
    torch.manual_seed(0)
    model = token_tagger()
    train = tagging_task(sequences, seed=0)
    with one_torch_thread():
        accuracies = train_tagger(model, *train, epochs=epochs, progress=tell)
    calibration, test = tagging_task(200, seed=1), tagging_task(200, seed=2)
    with files.atomic_dir(out_dir, "demo") as tmp, one_torch_thread():
        (tmp / files.DEMO_MARKER).write_text("written by edgeexit demo --tokens\n")
        example = tuple(torch.from_numpy(a[:2]) for a in train[:2])
        export(model, example, tmp / "bundle", output="tokens", progress=tell)
        for name, (ids, mask, labels) in (("calibration", calibration), ("test", test)):
            np.savez(tmp / f"{name}.npz", input_ids=ids, attention_mask=mask, y=labels)
        budget = Budget(max_accuracy_drop=1 - min_agreement)
        tell("calibrating", 0, 1)
        report = calibrate_bundle(tmp / "bundle", tmp / "calibration.npz", budget)
        runtime = Runtime(tmp / "bundle", threads=1)
        ids, mask = test[0], test[1]
        no_exit = (math.inf,) * runtime.num_exits
        answers, seconds = alternating_calls(
            {"full": lambda n: runtime.run([ids[n : n + 1], mask[n : n + 1]], thresholds=no_exit),
             "exits": lambda n: runtime.run([ids[n : n + 1], mask[n : n + 1]])},  # as deployed
            len(ids), rounds=rounds, warmup=10,
            progress=lambda done, total: tell("measuring", done, total),
        )  # fmt: skip
    full, early = (np.stack([r.predictions[0] for r in answers[k]]) for k in ("full", "exits"))
    ratios = seconds["full"] / seconds["exits"]
    rows = []
    for name, key in (("no early exit", "full"), ("per-token exits", "exits")):
        exits = np.stack([r.exit_index[0] for r in answers[key]])
        rows.append({
            "run": name, "tokens_per_s": rounds * test[0].size / seconds[key].sum(),
            "accuracy": float((np.stack([r.predictions[0] for r in answers[key]])
                               == test[2]).mean()),
            "exit_shares": (np.bincount(exits.ravel(), minlength=runtime.num_exits)
                            / exits.size).tolist(),
        })  # fmt: skip
    return TokenDemo(out_dir, report, accuracies, rows, float(np.median(ratios)),
                     ratios.tolist(), float((early == full).mean()), min_agreement)  # fmt: skip
