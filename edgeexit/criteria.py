"""The exit criteria: what each one needs, what it defaults to, and what the runtime keeps.

One entry per criterion. The bundle accepts these names, the CLI offers them, the exporter
checks an exit against ``Criterion.needs`` and fills in ``defaults``, and the runtime
carries ``runtime_state`` across exits for a criterion that has one (PABEE's patience).
The score itself is computed inside each segment's graph, so its formula is written in
torch, on the export side (``edgeexit.export.scores.SCORES``, one function per name here;
a test keeps the two in step). numpy only: the device reads this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Per remaining sample: first the value the threshold is compared with, then what the
# criterion keeps (patience: its argmax; Q-exit: the probability of not having halted).
# None before the first exit.
RuntimeState = tuple[np.ndarray, np.ndarray]
StateUpdate = Callable[[RuntimeState | None, np.ndarray, np.ndarray], RuntimeState]


def patience_update(
    state: RuntimeState | None, logits: np.ndarray, score: np.ndarray
) -> RuntimeState:
    """PABEE: the counter is 0 at exit 0, then +1 while the argmax stays the same, else 0."""
    pred = logits.argmax(axis=1)
    if state is None:
        return np.zeros(len(pred), dtype=np.float32), pred
    counter, prev = state
    return np.where(pred == prev, counter + 1, 0).astype(np.float32), pred


def q_exit_update(
    state: RuntimeState | None, logits: np.ndarray, score: np.ndarray
) -> RuntimeState:
    """PALBERT's Q-exit: each exit's gate gives the probability of halting there given that
    the sample reached it (the in-graph score, a sigmoid); the value compared is the
    cumulative probability of having halted by this exit, 1 - prod(1 - p)."""
    survive = 1.0 - score.astype(np.float32)
    if state is not None:
        survive = state[1] * survive
    return (1.0 - survive).astype(np.float32), survive


@dataclass(frozen=True)
class Criterion:
    name: str
    summary: str  # one line, for --help and the docs
    needs_gate: bool = False  # the exit returns (logits, gate [batch])
    min_classes: int = 1
    # the score is read from class logits (softmax, argmax): meaningless for an exit whose
    # output is an image or another tensor (ExportOptions.output = "tensor")
    reads_classes: bool = True
    # the score is one per token when the output is per-token logits (a softmax over the
    # last axis, a gate per token); a per-sample or runtime-decided one is not
    per_token: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)  # criterion_params
    # the parameter that is also every exit's threshold before calibration (patience's own
    # rule); None: every sample runs to the last exit until calibrated
    rule: str | None = None
    # Decided in the runtime, not in the graph: updates the per-sample state from an exit's
    # logits and graph score; the threshold then applies to the state's first value.
    runtime_state: StateUpdate | None = None

    def params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.defaults, **given}

    def initial_thresholds(self, params: Mapping[str, Any], num_exits: int) -> tuple[float, ...]:
        """Before calibration: every sample runs to the last exit, except under a criterion
        with its own rule (patience: leave once ``patience`` exits in a row agree)."""
        if self.rule is not None:
            return (float(params[self.rule]),) * num_exits
        return (math.inf,) * num_exits

    def output_problem(self, output: str) -> str | None:
        """Why this criterion cannot score exits that give ``output`` ("logits", "tensor"
        or "tokens", as ``Manifest.output``), or None. Export and the manifest reader both
        ask it."""
        if output == "tensor" and self.reads_classes:
            usable = ", ".join(c.name for c in CRITERIA.values() if not c.reads_classes)
            return (
                f"criterion {self.name!r} reads class probabilities, and the exits give "
                f"tensors, not class logits; expected one of {usable} (a learned gate or "
                "uncertainty head, or the hidden state's change)"
            )
        if output == "tokens" and not self.per_token:
            usable = ", ".join(c.name for c in CRITERIA.values() if c.per_token)
            return (
                f"criterion {self.name!r} scores a whole sample, not each token; per-token "
                f"exits take one of {usable}"
            )
        return None

    def problem(self, num_classes: int | None, has_gate: bool, where: str) -> str | None:
        """Why this criterion cannot score the exit ``where``, or None. ``num_classes``
        None: the exit's output is a tensor, not class logits (``output_problem`` says
        whether the criterion can score that)."""
        if self.needs_gate and not has_gate:
            return (
                f"criterion {self.name!r} needs {where} to return (output, gate [batch]); "
                "it returns its output alone"
            )
        if num_classes is None:
            return None
        if num_classes < self.min_classes:
            return (
                f"criterion {self.name!r} needs at least {self.min_classes} classes; "
                f"{where} has {num_classes}"
            )
        return None


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("confidence", "max softmax probability", per_token=True),
        Criterion("margin", "top-1 minus top-2 probability", min_classes=2, per_token=True),
        Criterion(
            "entropy", "1 - H(p) / log(C): 1 one-hot, 0 uniform", min_classes=2, per_token=True
        ),
        Criterion(
            "similarity",
            "cosine of the hidden state entering and leaving (MuE, CALM)",
            reads_classes=False,
        ),
        Criterion(
            "gate",
            "the head's own learned score (JEI-DNN, DeeDiff)",
            needs_gate=True,
            reads_classes=False,
            per_token=True,
        ),
        Criterion(
            "patience",
            "PABEE: leave once this many exits in a row agree on the argmax",
            defaults={"patience": 2},
            rule="patience",
            runtime_state=patience_update,
        ),
        Criterion(
            "q-exit",
            "PALBERT: the cumulative halting probability of the exits' gates",
            needs_gate=True,
            reads_classes=False,
            runtime_state=q_exit_update,
        ),
    )
}
NAMES = tuple(CRITERIA)
