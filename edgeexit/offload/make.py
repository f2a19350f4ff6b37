"""``split_bundle``: record a split in a bundle, after checking what its wire encoding keeps.

Like ``compile`` checks a precision, the split is checked on data before anything is
written: every sample runs through the unsplit bundle and through the split one (the device
part, the carry encoded and decoded as it would cross the link, the server part, in this
process), with the manifest's thresholds; the split is written only if its answers lose at
most ``max_drop`` accuracy (with labels) or agreement with the unsplit answers (without).
float32 crosses exactly and needs no data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edgeexit import files
from edgeexit.bundle import InputSpec, read_manifest, write_manifest
from edgeexit.data import load_data
from edgeexit.energy import NoMeter
from edgeexit.errors import InputError, PrecisionLossError
from edgeexit.offload.device import SplitRuntime
from edgeexit.offload.tail import InProcessLink, Tail
from edgeexit.progress import Progress, silent
from edgeexit.runtime import Runtime
from edgeexit.split import (
    ENCODINGS,
    carry_bytes,
    read_split,
    refuse_unsplittable,
    with_split,
)

CHECK_BATCH = 256


@dataclass(frozen=True)
class SplitReport:
    at: int
    encoding: str
    carry_bytes: int  # one sample's carry on the wire
    samples: int  # checked on (0: float32, exact)
    offloaded: float | None  # share of the checked samples the server finishes
    drop: float | None  # accuracy (labels) or agreement lost to the encoding
    measure: str  # 'accuracy', 'agreement' or 'exact'
    max_abs_diff: float | None  # largest logit difference from the unsplit answers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def split_bundle(
    bundle_dir: str | os.PathLike,
    at: int,
    *,
    encoding: str = "float32",
    data: str | os.PathLike | None = None,
    max_drop: float = 0.01,
    progress: Progress = silent,
) -> SplitReport:
    """Split ``bundle_dir`` after exit ``at`` (in place, under the bundle's lock), or raise
    before writing anything: InputError for a split the bundle cannot take,
    PrecisionLossError when the encoding loses more than ``max_drop``."""
    if encoding not in ENCODINGS:
        raise InputError(f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    if not 0 <= max_drop <= 1:
        raise InputError(f"`max_drop` is {max_drop:g}; expected a fraction in [0, 1]")
    if encoding != "float32" and data is None:
        raise InputError(
            f"a {encoding} carry is lossy: give `data` (.npz) to check it on, or use float32"
        )
    read_manifest(bundle_dir)  # a clear error for a path that is no bundle, before locking
    with files.locked(bundle_dir, "split") as lock:
        manifest = read_manifest(bundle_dir)
        plain = replace(manifest, extra={k: v for k, v in manifest.extra.items() if k != "split"})
        at = refuse_unsplittable(plain, at)
        carry = _carry_specs(bundle_dir, plain.inputs, at)
        candidate = read_split(with_split(plain, at, encoding, carry, {}))
        if data is None:
            report = SplitReport(at, encoding, carry_bytes(carry, encoding), 0, None, 0.0,
                                 "exact", 0.0)  # fmt: skip
        else:
            report = _check(bundle_dir, candidate, data, max_drop, progress)
        lock.check()
        write_manifest(bundle_dir, with_split(plain, at, encoding, carry, report.to_json()))
    return report


def _carry_specs(bundle_dir, inputs: tuple[InputSpec, ...], at: int) -> tuple[InputSpec, ...]:
    """Segment ``at``'s carry as the graphs give it: one probe sample through the chain."""
    runtime = Runtime(bundle_dir, max_exit=at, bodies=False, meter=NoMeter())
    probe = [np.zeros((1, *(int(d) for d in spec.shape[1:])), dtype=spec.dtype) for spec in inputs]
    feeds: Any = probe
    for i in range(at + 1):
        feeds, _, _ = runtime.run_segment(i, feeds)
    names = runtime.manifest.segments[at].carry
    return tuple(
        InputSpec(name, str(x.dtype), ("batch", *x.shape[1:])) for name, x in zip(names, feeds)
    )


def _check(bundle_dir, candidate, data, max_drop: float, progress: Progress) -> SplitReport:
    """Run ``data`` unsplit and split (in this process, no network) and compare."""
    link = InProcessLink(Tail(bundle_dir, split=candidate))
    split = SplitRuntime(bundle_dir, server=None, link=link, split=candidate, meter=NoMeter())
    reference = Runtime(bundle_dir, meter=NoMeter())
    dataset = load_data(data, reference.manifest.inputs)
    n = len(dataset)
    same = correct_ref = correct_split = 0
    offloaded = 0
    worst = 0.0
    for start in range(0, n, CHECK_BATCH):
        part = dataset.take(slice(start, min(start + CHECK_BATCH, n)))
        ref = reference.run(part.inputs)
        result = split.run(part.inputs)
        if result.degraded.any():  # no network in between: a bug, not a loss
            raise InputError(f"the split does not round-trip: {result.reason}")
        got = result.logits
        offloaded += int(result.offloaded.sum())
        worst = max(worst, float(np.abs(got - ref.logits).max()))
        if reference.manifest.output == "logits":
            ref_pred, got_pred = ref.logits.argmax(axis=1), got.argmax(axis=1)
            same += int((ref_pred == got_pred).sum())
            if part.labels is not None:
                correct_ref += int((ref_pred == part.labels).sum())
                correct_split += int((got_pred == part.labels).sum())
        progress("checking the split", min(start + CHECK_BATCH, n), n)
    bytes_ = carry_bytes(candidate.carry, candidate.encoding)
    if reference.manifest.output != "logits":
        measure, drop = "max_abs_diff", None
    elif dataset.labels is not None:
        measure, drop = "accuracy", (correct_ref - correct_split) / n
    else:
        measure, drop = "agreement", 1 - same / n
    report = SplitReport(candidate.at, candidate.encoding, bytes_, n, offloaded / n, drop,
                         measure, worst)  # fmt: skip
    if drop is not None and drop > max_drop:
        raise PrecisionLossError(
            f"a {candidate.encoding} carry loses {100 * drop:.2f} pp of {measure} at exit "
            f"{candidate.at} (allowed {100 * max_drop:g} pp); nothing written: try float16 or "
            "float32",
            report,
        )
    return report
