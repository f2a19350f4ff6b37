"""How a decoder bundle generates, checked once: the self-speculative settings and the
early-exit thresholds, whether a caller passes them or a manifest holds them.

Both end up as lengths and comparisons inside the decoding loops, which bind cache memory
by address: a draft length of 2.5 never equals a count and drafting ran past the caches'
end, writing past them. So every value is checked for its type and range before a loop
sees it, here, and the manifest's copy (``manifest.py``) goes through the same checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeexit.errors import InputError

MODES = ("full", "self-speculative", "early-exit")


def is_count(value: Any) -> bool:
    """An int (a bool is not a count, nor is 2.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool and not NaN."""
    return is_count(value) or (isinstance(value, float) and not math.isnan(value))


@dataclass(frozen=True)
class SpeculativeOptions:
    """Self-speculative decoding: draft with the first ``k`` segments, up to ``gamma``
    tokens, stopping when the draft's confidence is below ``draft_stop`` (0: never stops;
    above 1: never drafts). ``k`` must also leave a segment to verify with, which only a
    bundle knows: ``Generator`` checks that."""

    k: int = 1
    gamma: int = 4
    draft_stop: float = 0.0

    def __post_init__(self) -> None:
        for name in ("k", "gamma"):
            value = getattr(self, name)
            if not is_count(value) or value < 1:
                raise InputError(f"`{name}` is {value!r}; expected a positive integer")
        if not is_number(self.draft_stop) or not math.isfinite(self.draft_stop):
            raise InputError(
                f"`draft_stop` is {self.draft_stop!r}; expected a finite number (a confidence)"
            )


def exit_thresholds(values: Any, num_exits: int) -> tuple[float, ...]:
    """Early-exit thresholds, one per exit but the last (which takes every token left): a
    token leaves at exit i when its confidence reaches ``values[i]``. ``None`` or ``inf``
    mean never, as in a classifier bundle; NaN and -inf mean nothing and are refused."""
    want = num_exits - 1
    if isinstance(values, np.ndarray) and values.ndim == 1:
        values = values.tolist()  # numpy's numbers as Python's (a numpy bool as a bool)
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InputError(
            f"thresholds are {type(values).__name__}; expected a list of {want} numbers, one "
            "per exit but the last"
        )
    if len(values) != want:
        raise InputError(
            f"got {len(values)} thresholds; expected {want} numbers, one per exit but the "
            "last (which takes every token left)"
        )
    out = []
    for i, value in enumerate(values):
        if value is None:
            value = math.inf
        if (
            not (is_number(value) or _numpy_number(value))
            or math.isnan(value)
            or value == -math.inf
        ):
            raise InputError(
                f"threshold {i} is {value!r}; expected a number, or inf / null for never"
            )
        out.append(float(value))
    return tuple(out)


def _numpy_number(value: Any) -> bool:
    """A numpy float or int scalar (np.inf is a float already)."""
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return kind in ("f", "i", "u") and getattr(value, "ndim", 1) == 0
