"""A split bundle: segments 0..at run on the device, the rest on a server (docs/serving.md).

A bundle becomes a split bundle when its manifest holds a ``split`` block (written by
``edgeexit split``). The one bundle serves both sides: the device opens the chain capped at
exit ``at`` (``Runtime(max_exit=at)``), the server opens the tail (``Runtime(tail=True)``),
whose inputs are the carry of segment ``at``, recorded here with its dtypes and shapes so
the server can check every request before allocating for it. A sample that is not
confident enough at exit ``at`` sends its carry to the server in the wire ``encoding``
the block names (``offload/wire.py``); ``check`` is the agreement that encoding kept when
it was chosen, measured like ``compile`` measures a precision.

``split_id`` names the split (a digest of the manifest's graphs, thresholds and the split):
a device and a server holding different bundles, or the same bundle split elsewhere, refuse
to talk rather than give answers of another model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeexit.bundle import InputSpec, Manifest, input_spec, is_count, thresholds_json
from edgeexit.criteria import CRITERIA
from edgeexit.errors import BundleError, InputError, quoted

SPLIT_FORMAT = "edgeexit.split/1"
# How a float32 carry crosses the link: as computed; float16 (half the bytes); int8 with
# one float32 scale per sample and tensor (a quarter). Other carries (masks, token ids)
# always cross as they are.
ENCODINGS = ("float32", "float16", "int8")


@dataclass(frozen=True)
class Split:
    """The ``split`` block of a manifest."""

    at: int  # the device's last exit; the server runs exits at + 1 ..
    encoding: str  # one of ENCODINGS
    carry: tuple[InputSpec, ...]  # segment ``at``'s carry: the tail's inputs, in order
    split_id: str
    check: dict[str, Any]  # what the encoding kept, measured when it was chosen

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT,
            "at": self.at,
            "encoding": self.encoding,
            "carry": [
                {"name": c.name, "dtype": c.dtype, "shape": list(c.shape)} for c in self.carry
            ],
            "split_id": self.split_id,
            "check": self.check,
        }


def refuse_unsplittable(manifest: Manifest, at: Any) -> int:
    """``at`` checked against the bundle: an exit with a later one, in a bundle whose exit
    decisions are per exit (InputError naming what is wrong, and what would do)."""
    n = manifest.num_exits
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < n - 1:
        raise InputError(
            f"split point {at!r} is not an exit with a later one; expected 0..{n - 2} "
            f"(this bundle has {n} exits; the server runs the exits after it)"
        )
    if CRITERIA[manifest.criterion].runtime_state is not None:
        raise InputError(
            f"criterion {manifest.criterion!r} decides from several exits together; a split "
            "bundle needs a per-exit criterion (confidence, margin, entropy, gate...)"
        )
    if manifest.output == "tokens":
        raise InputError(
            "this bundle's exits are per token; a split bundle takes one exit per sample"
        )
    cap = manifest.extra.get("max_exit")
    if cap is not None and cap <= at:
        raise InputError(
            f"the bundle is capped at exit {cap} (calibrate's `max_exit`); nothing after exit "
            f"{at} would run on the server: split at an earlier exit or calibrate again"
        )
    return at


def split_id(manifest: Manifest, at: int, encoding: str, carry: tuple[InputSpec, ...]) -> str:
    """A digest of everything both sides must agree on."""
    doc = {
        "graphs": [s.sha256 for s in manifest.segments],
        "criterion": manifest.criterion,
        "criterion_params": manifest.criterion_params,
        "thresholds": thresholds_json(manifest.thresholds),
        "at": at,
        "encoding": encoding,
        "carry": [[c.name, c.dtype, list(c.shape)] for c in carry],
    }
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_split(manifest: Manifest, *, verify: bool = True) -> Split:
    """The manifest's split block, checked, or a BundleError saying how to make one.
    ``verify``: also check its id against the bundle (False: calibrate, about to renew it)."""
    doc = manifest.extra.get("split")
    if doc is None:
        raise BundleError("this bundle is not split; split it first: edgeexit split BUNDLE --at K")
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise BundleError(f"manifest split block is not {SPLIT_FORMAT!r}; split the bundle again")
    at = doc.get("at")
    if not is_count(at) or not 0 <= at < manifest.num_exits - 1:
        raise BundleError(
            f"manifest split.at is {quoted(at)}; expected an exit 0..{manifest.num_exits - 2}"
        )
    encoding = doc.get("encoding")
    if encoding not in ENCODINGS:
        raise BundleError(
            f"manifest split.encoding is {quoted(encoding)}; expected one of {', '.join(ENCODINGS)}"
        )
    raw = doc.get("carry")
    if not isinstance(raw, list) or not raw:
        raise BundleError("manifest split.carry must be a non-empty list")
    carry = tuple(input_spec(c, f"split.carry[{k}]") for k, c in enumerate(raw))
    expected = manifest.segments[at].carry
    if tuple(c.name for c in carry) != expected:
        raise BundleError(
            f"manifest split.carry names {quoted([c.name for c in carry])}; segment {at} "
            f"carries {quoted(list(expected))}"
        )
    check = doc.get("check", {})
    if not isinstance(check, dict):
        raise BundleError("manifest split.check must be an object")
    split = Split(at, encoding, carry, str(doc.get("split_id")), check)
    if verify and split.split_id != split_id(manifest, at, encoding, carry):
        raise BundleError(
            "manifest split block does not match the bundle's graphs and thresholds (they "
            "changed after the split): split the bundle again, and give the server the same copy"
        )
    return split


def with_split(manifest: Manifest, at: int, encoding: str, carry: tuple[InputSpec, ...],
               check: dict[str, Any]) -> Manifest:  # fmt: skip
    split = Split(at, encoding, carry, split_id(manifest, at, encoding, carry), check)
    return manifest.with_extra(split=split.to_json())


def renewed(manifest: Manifest) -> Manifest:
    """A split bundle given new thresholds (calibrate): the same split, its id renewed. Its
    ``check`` was measured with the thresholds it had then, and says so."""
    if "split" not in manifest.extra:
        return manifest
    old = read_split(manifest, verify=False)
    cap = manifest.extra.get("max_exit")
    if cap is not None and cap <= old.at:
        raise InputError(
            f"the chain is capped at exit {cap}, at or before the split after exit {old.at}: "
            "nothing would run on the server; calibrate without a cap that deep, or split earlier"
        )
    check = {**old.check, "thresholds": "the ones the bundle had when it was split"}
    return with_split(manifest, old.at, old.encoding, old.carry, check)


def tail_manifest(manifest: Manifest, split: Split) -> Manifest:
    """The server's chain: the segments after the split, fed the carry. Joined graphs that
    start from the model inputs (plain, prefix) do not belong to it; bodies do."""
    first = split.at + 1
    segments = tuple(replace(s, plain=None, prefix=None) for s in manifest.segments[first:])
    inputs = tuple(
        InputSpec(name, c.dtype, c.shape) for name, c in zip(segments[0].inputs, split.carry)
    )
    extra = {k: v for k, v in manifest.extra.items() if k not in ("split", "max_exit")}
    return replace(
        manifest,
        inputs=inputs,
        segments=segments,
        thresholds=manifest.thresholds[first:],
        extra=extra,
    )


def wire_encoding(dtype: str, encoding: str) -> str:
    """How a carry tensor of ``dtype`` crosses under the split's ``encoding``: only float32
    ones are encoded; any other crosses as it is ("raw")."""
    return encoding if dtype == "float32" else "raw"


def encoded_row_bytes(dtype: np.dtype, elements: int, encoding: str) -> int:
    """Bytes one row of ``elements`` values takes on the wire: float16 two each, int8 one
    each plus its float32 scale, "float32" or "raw" as the dtype holds them."""
    if encoding == "float16":
        return 2 * elements
    if encoding == "int8":
        return elements + 4
    return elements * np.dtype(dtype).itemsize


def carry_bytes(carry: tuple[InputSpec, ...], encoding: str) -> int:
    """Bytes one sample's carry takes on the wire (the scales included)."""
    return sum(
        encoded_row_bytes(
            c.dtype, math.prod(int(d) for d in c.shape[1:]), wire_encoding(c.dtype, encoding)
        )
        for c in carry
    )
