"""Exit scores computed inside each segment's graph (higher = more confident).

Each criterion maps an exit's logits (and, where needed, its gate or the hidden state
entering and leaving the segment) to one float per sample, so the device compares a score
with a threshold and never needs to know the criterion.

- ``confidence``: max softmax probability.
- ``margin``: top-1 minus top-2 probability.
- ``entropy``: ``1 - H(p) / log(C)``: 1 for a one-hot prediction, 0 for a uniform one.
- ``similarity``: cosine similarity between the hidden state (the first tensor of the carry)
  entering and leaving the segment, flattened per sample (MuE, CALM). Where the two have
  different sizes (segment 0 fed by the raw inputs, a downsampling block) there is nothing
  to compare and the score is -1, the lowest cosine: only a threshold of -1 exits there.
- ``gate``: the head's own learned score ``[batch]``, as-is (JEI-DNN, DeeDiff).
- ``q-exit`` (PALBERT): the in-graph score is sigmoid(gate), the probability of halting at
  this exit; the runtime accumulates the probability of having halted, 1 - prod(1 - p).
- ``patience`` (PABEE): the in-graph score is the confidence; the runtime counts how many
  consecutive exits agreed on the argmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from edgeexit.criteria import CRITERIA, NAMES
from edgeexit.errors import ModelContractError


def check_criterion(criterion: str, num_classes: int | None, has_gate: bool, where: str) -> None:
    """Raise ModelContractError if ``criterion`` cannot be computed for this exit
    (``num_classes`` None: the exit gives a tensor, not class logits)."""
    known = CRITERIA.get(criterion)
    if known is None:
        raise ModelContractError(f"unknown criterion {criterion!r}; expected one of {NAMES}")
    problem = known.problem(num_classes, has_gate, where)
    if problem:
        raise ModelContractError(problem)


def exit_score(
    criterion: str,
    logits: torch.Tensor,
    gate: torch.Tensor | None,
    hidden_in: torch.Tensor,
    hidden_out: torch.Tensor,
) -> torch.Tensor:
    """The score ``[batch]`` float32 of one exit under ``criterion``."""
    score = SCORES.get(criterion)
    if score is None:
        raise ModelContractError(f"unknown criterion {criterion!r}; expected one of {NAMES}")
    return score(logits.float(), gate, hidden_in, hidden_out)


def _confidence(logits, gate, hidden_in, hidden_out):
    return torch.softmax(logits, dim=-1).max(dim=-1).values


def _margin(logits, gate, hidden_in, hidden_out):
    top2 = torch.softmax(logits, dim=-1).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def _entropy(logits, gate, hidden_in, hidden_out):
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return 1.0 - entropy / math.log(logits.shape[-1])


def _gate(logits, gate, hidden_in, hidden_out):
    return gate.float()


def _halting(logits, gate, hidden_in, hidden_out):
    return torch.sigmoid(gate.float())


def _similarity(logits, gate, hidden_in, hidden_out):
    return _cosine(hidden_in, hidden_out)


# The in-graph score of every criterion in edgeexit.criteria, by name.
SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "confidence": _confidence,
    "margin": _margin,
    "entropy": _entropy,
    "similarity": _similarity,
    "gate": _gate,
    "patience": _confidence,  # the runtime counts agreeing exits; the graph's score is spare
    "q-exit": _halting,  # the runtime accumulates these into the probability of halting
}


def _cosine(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    if before[0].numel() != after[0].numel():
        # Nothing comparable: the lowest cosine, so no calibrated threshold above -1 exits.
        # Derived from `after` (not torch.full) so the batch axis stays dynamic in the graph.
        return torch.zeros_like(after.reshape(after.shape[0], -1)[:, 0], dtype=torch.float32) - 1.0
    a = before.reshape(before.shape[0], -1).float()
    b = after.reshape(after.shape[0], -1).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)
