"""How a decoder bundle generates, checked once: the self-speculative settings and the
early-exit thresholds, whether a caller passes them or a manifest holds them.

Both end up as lengths and comparisons inside the decoding loops, which bind cache memory
by address: a draft length of 2.5 never equals a count and drafting ran past the caches'
end, writing past them. So every value is checked for its type and range before a loop
sees it, here, and the manifest's copy (``manifest.py``) goes through the same checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class ModeChoice:
    """The mode ``generate`` runs when none is asked for, and why, in words."""

    mode: str
    why: str


def chosen_mode(generation: Mapping[str, Any], sampled: bool = False) -> ModeChoice:
    """The mode a bundle's ``generation`` block (what calibrate-generation recorded,
    checked by the manifest's reader) makes the default: of the modes whose output it
    accepts, the one measured fastest against full decoding, if faster. Self-speculative's
    output is full's, always accepted; early-exit's differs, accepted only where its
    agreement with full held on held-out prompts. A block without measurements (written by
    hand) gives self-speculative if it has settings for it, else early-exit; no block, full.
    ``sampled``: the reason speaks of sampled output (full's distribution; the agreement
    early-exit was measured at is greedy decoding's)."""
    if not generation:
        return ModeChoice(
            "full", "the bundle records no generation settings: calibrate-generation chooses them"
        )
    report = generation.get("report")
    thresholds = generation.get("early_exit") or ()
    early = any(t is not None and t != math.inf for t in thresholds)
    if report is None:
        if "self_speculative" in generation:
            return ModeChoice("self-speculative", "the bundle's recorded settings (not measured)")
        if early:
            return ModeChoice("early-exit", "the bundle's recorded thresholds (not measured)")
        return ModeChoice("full", "the bundle's generation settings leave no early exit")
    speeds = _accepted_speedups(generation, report, early)
    faster = {mode: speed for mode, speed in speeds.items() if speed > 1}
    if not faster:
        return ModeChoice("full", _none_faster(generation, report, early))
    mode = max(faster, key=faster.get)  # a tie goes to self-speculative: full's tokens
    if mode == "self-speculative":
        same = "distribution" if sampled else "tokens"
        why = f"calibrated: {faster[mode]:.2f}x full's tokens/s, the same {same} as full"
    else:
        why = (
            f"calibrated: {faster[mode]:.2f}x full's tokens/s, "
            f"{report['held_out_agreement']:.1%} of full's tokens on held-out prompts "
            f"(at least {report['min_agreement']:.0%} asked){', greedy' if sampled else ''}"
        )
    return ModeChoice(mode, why)


def _accepted_speedups(
    generation: Mapping[str, Any], report: Mapping[str, Any], early: bool
) -> dict[str, float]:
    speeds = {}
    if "self_speculative" in generation and report.get("speculative_speedup") is not None:
        speeds["self-speculative"] = float(report["speculative_speedup"])
    held = report.get("held") is True and report.get("held_out_agreement") is not None
    if early and held and report.get("early_exit_speedup") is not None:
        speeds["early-exit"] = float(report["early_exit_speedup"])
    return speeds


def _none_faster(generation: Mapping[str, Any], report: Mapping[str, Any], early: bool) -> str:
    said = []
    if report.get("speculative_speedup") is not None and "self_speculative" in generation:
        said.append(f"self-speculative ran {report['speculative_speedup']:.2f}x full's tokens/s")
    if early and report.get("held") is False:
        said.append("early-exit missed its agreement with full on held-out prompts")
    elif early and report.get("held") is None:
        said.append("early-exit was not checked on held-out prompts")
    elif early:
        said.append(f"early-exit ran {report.get('early_exit_speedup') or 0:.2f}x full's tokens/s")
    return "calibrate-generation found no faster mode: " + "; ".join(said or ["none recorded"])
