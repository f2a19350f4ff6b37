"""Demo data that ships with scikit-learn (no download): the 8x8 digits, split
deterministically, a noisy variant whose samples range from easy to hard, and a synthetic
token-classification task for the transformer example. numpy only (plus scikit-learn)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` float32 [N, 1, 8, 8] in [0, 1], labels ``y`` int64 [N].

    ``noise_std`` holds each sample's Gaussian noise level when the split is noisy.
    """

    x: np.ndarray
    y: np.ndarray
    noise_std: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write an edgeexit data file (``x`` and ``y``)."""
        np.savez(path, x=self.x, y=self.y)
        return Path(path)


@dataclass(frozen=True)
class DigitsSplits:
    train: Split
    calibration: Split
    test: Split


def load_digits(*, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.2)) -> DigitsSplits:
    """The 1,797 bundled digits as train / calibration / test (the rest), shuffled by ``seed``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = int(fractions[0] * len(y))
    n_cal = int(fractions[1] * len(y))
    parts = np.split(order, [n_train, n_train + n_cal])
    return DigitsSplits(*(Split(x[p], y[p]) for p in parts))


def add_noise(split: Split, *, max_noise_std: float = 0.6, seed: int = 0) -> Split:
    """Each sample gets Gaussian noise of its own strength, uniform in [0, max_noise_std]:
    clean samples are easy, heavily noised ones are hard, so exits have something to decide."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.0, max_noise_std, size=len(split)).astype(np.float32)
    noise = rng.standard_normal(split.x.shape).astype(np.float32) * std[:, None, None, None]
    return Split((split.x + noise).astype(np.float32), split.y, std)


def noisy_copies(split: Split, copies: int, seed: int, max_noise_std: float = 0.6) -> Split:
    """``copies`` noisy copies of ``split`` (each with ``add_noise``'s per-sample strengths),
    stacked: a held-out split large enough to resolve 1 pp."""
    parts = [add_noise(split, max_noise_std=max_noise_std, seed=seed + k) for k in range(copies)]
    return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def load_noisy_digits(*, seed: int = 0, max_noise_std: float = 0.6) -> DigitsSplits:
    """``load_digits`` with per-sample noise on every split (different noise per split)."""
    clean = load_digits(seed=seed)
    return DigitsSplits(
        *(
            add_noise(s, max_noise_std=max_noise_std, seed=seed + k)
            for k, s in enumerate((clean.train, clean.calibration, clean.test))
        )
    )


def make_token_task(
    n: int, *, seq_len: int = 16, vocab_size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic sequence task for the BERT-like example: ``(input_ids, attention_mask, y)``.

    Sequences have random lengths (padding is id 0, mask 0); the label says whether token 1
    occurs more often than token 2 among the real tokens.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=n)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab_size, size=(n, seq_len)) * mask
    y = ((ids == 1).sum(axis=1) > (ids == 2).sum(axis=1)).astype(np.int64)
    return ids.astype(np.int64), mask, y
