"""A token tagger whose tokens leave at their own exits (DToP, DyVTE): a small transformer
encoder with a per-token classifier after every layer, and a synthetic tagging task in
which some tokens are easy (their label follows from the token alone) and others need
context (whether the token occurs at least three times in its sequence: counting over
attention, which one layer does roughly and later ones better), so exits have something
to decide token by token. Trains in seconds on 2 cores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeexit.examples.models import Embeddings, EncoderLayer, FirstLayer
from edgeexit.export.model import MultiExit

CONTEXT_CLASS = 3  # the label of a context token that occurs three times or more


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
) -> list[float]:
    """Every exit's per-token cross-entropy, summed; returns each exit's token accuracy."""
    torch.manual_seed(seed)
    x, m, y = (torch.from_numpy(a) for a in (ids, mask, labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=generator).split(batch_size):
            outputs = model(x[rows], m[rows])
            loss = sum(nn.functional.cross_entropy(o.flatten(0, 1), y[rows].flatten())
                       for o in outputs)  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model(x, m)
    return [float((o.argmax(-1) == y).float().mean()) for o in outputs]
