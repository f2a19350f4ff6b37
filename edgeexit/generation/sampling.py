"""How a token is chosen from an exit's logits: greedily, or sampled (temperature, top-k,
top-p, a seed), and how self-speculative decoding keeps full decoding's distribution while
sampling (Leviathan et al. 2023; Chen et al. 2023).

A draft token ``x`` drawn from the draft exit's distribution ``q`` is accepted with
probability ``min(1, p(x) / q(x))``, ``p`` being the full model's distribution at that
position (both after temperature, top-k and top-p); at the first rejection the token is
drawn from ``normalize(max(0, p - q))`` instead. Each token then follows ``p`` exactly,
whatever ``q`` is: what the full model would have sampled. Greedy is the limit where ``p``
and ``q`` put all their mass on their argmax: accept while they agree, else take ``p``'s.

The distributions are float64: float32's rounding in the residual ``p - q`` could give a
token that ``p`` and ``q`` both hold with the same probability a share of its own.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeexit.errors import BundleError, InputError
from edgeexit.generation.options import is_count, is_number


@dataclass(frozen=True)
class SamplingOptions:
    """Sample each token instead of taking the most likely one: from the logits divided by
    ``temperature`` (0: greedy, no sampling), kept to the ``top_k`` most likely tokens and
    then to the fewest whose probabilities add up to ``top_p`` (None: all). ``seed`` makes
    the tokens repeatable (None: a fresh one each call, which ``Generation.seed`` reports)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not is_number(t) or not math.isfinite(t) or t < 0:
            raise InputError(
                f"`temperature` is {t!r}; expected a finite number >= 0 (0: greedy decoding)"
            )
        if self.top_k is not None and (not is_count(self.top_k) or self.top_k < 1):
            raise InputError(f"`top_k` is {self.top_k!r}; expected a positive integer or None")
        p = self.top_p
        if p is not None and (not is_number(p) or not 0 < p <= 1):
            raise InputError(f"`top_p` is {p!r}; expected a number in (0, 1] or None")
        if self.seed is not None and (not is_count(self.seed) or self.seed < 0):
            raise InputError(f"`seed` is {self.seed!r}; expected an integer >= 0 or None")
        if self.greedy and (self.top_k is not None or p is not None):
            which = "top_k" if self.top_k is not None else "top_p"
            raise InputError(
                f"`temperature` 0 is greedy decoding, where `{which}` changes nothing; "
                "give a temperature above 0 to sample"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingOptions(temperature=0.0)


def probabilities(logits: np.ndarray, options: SamplingOptions) -> np.ndarray:
    """The distribution a sampled token is drawn from: softmax(logits / temperature),
    kept to the top-k tokens (ties with the k-th kept too), then to the fewest most
    likely tokens whose probabilities reach top-p, renormalized (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(z).all():
        raise BundleError("an exit gave logits that are not finite numbers; cannot sample")
    if options.top_k is not None and options.top_k < len(z):
        kth = np.partition(z, len(z) - options.top_k)[len(z) - options.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp((z - z.max()) / options.temperature)  # the largest is exp(0) = 1
    p /= p.sum()
    if options.top_p is not None and options.top_p < 1:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = min(int(np.searchsorted(cumulative, options.top_p)) + 1, len(p))
        kept = np.zeros_like(p)
        kept[order[:keep]] = p[order[:keep]]
        p = kept / kept.sum()
    return p


def accept(p: np.ndarray, q: np.ndarray, token: int, u: float) -> bool:
    """Keep a draft ``token`` drawn from ``q`` when ``u`` (uniform in [0, 1)) is below
    p(token) / q(token)."""
    return u * q[token] < p[token]


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """What a rejected draft's token is drawn from: normalize(max(0, p - q)). Rejection
    needs p(x) < q(x) somewhere, so the excess is positive but for rounding; then ``p``."""
    excess = np.maximum(p - q, 0.0)
    total = excess.sum()
    return excess / total if total > 0 else p


class Sampler:
    """The token choices of one call: greedy, or sampled from one seeded numpy Generator
    (the same seed, the same tokens)."""

    def __init__(self, options: SamplingOptions | None) -> None:
        self.options = GREEDY if options is None else options
        self.greedy = self.options.greedy
        seed = self.options.seed
        self.seed = None if self.greedy else (secrets.randbits(32) if seed is None else seed)
        self.rng = None if self.greedy else np.random.default_rng(self.seed)

    def pick(self, logits: np.ndarray) -> int:
        """A token from one position's logits [V]."""
        if self.greedy:
            return int(logits.argmax())
        return self.draw(probabilities(logits, self.options))

    def draft(self, logits: np.ndarray) -> tuple[int, np.ndarray | None]:
        """A draft token, and the distribution it was drawn from (None when greedy)."""
        if self.greedy:
            return int(logits.argmax()), None
        q = probabilities(logits, self.options)
        return self.draw(q), q

    def verify(
        self, drafts: Sequence[int], qs: Sequence[np.ndarray | None], logits: np.ndarray
    ) -> tuple[int, list[int]]:
        """The full model's verdict on ``drafts``, from its logits [n, V] at the drafted
        positions (n = len(drafts), or one more where drafting stopped before the limit):
        how many drafts are kept, and the tokens decided (those drafts, then one token of
        the full model's own at the first rejected position or the position after the
        last draft, if there is one)."""
        if self.greedy:
            predictions = logits.argmax(axis=1)
            m = 0
            while m < len(drafts) and drafts[m] == predictions[m]:
                m += 1
            return m, list(drafts[:m]) + ([int(predictions[m])] if m < len(logits) else [])
        for j, (token, q) in enumerate(zip(drafts, qs)):
            p = probabilities(logits[j], self.options)
            if not accept(p, q, token, self.rng.random()):
                return j, [*drafts[:j], self.draw(residual(p, q))]
        if len(drafts) < len(logits):
            return len(drafts), [*drafts, self.pick(logits[len(drafts)])]
        return len(drafts), list(drafts)

    def draw(self, p: np.ndarray) -> int:
        """A token drawn from ``p`` (inverse CDF: a token of probability 0 is never drawn)."""
        cumulative = np.cumsum(p)
        token = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return token if token < len(p) else int(np.flatnonzero(p)[-1])  # u rounded up to the end
