"""The bundle: the one contract between the host and the device (DESIGN.md §2).

A bundle is a directory holding ``manifest.json`` and one ONNX file per segment. This
module reads, checks and writes manifests, and writes bundles atomically. It imports
neither torch nor onnx, so the device can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeexit.errors import BundleError

FORMAT = "edgeexit.bundle/1"
MANIFEST = "manifest.json"
CRITERIA = ("confidence", "margin", "entropy", "similarity", "gate", "patience")
BATCH_DIM = "batch"


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` holds ints, with the string ``"batch"`` for the batch axis."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class SegmentSpec:
    """Segment i = backbone block i + exit head i, as one ONNX file."""

    file: str
    sha256: str
    inputs: tuple[str, ...]
    carry: tuple[str, ...]
    logits: str
    score: str


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``.

    ``thresholds[i]`` is the exit score a sample needs to leave at exit i; ``inf`` means no
    sample leaves there (written as JSON ``null``). The last exit always exits.
    ``extra`` keeps every other key (precision, target, calibration report...) untouched.
    """

    inputs: tuple[InputSpec, ...]
    segments: tuple[SegmentSpec, ...]
    criterion: str
    thresholds: tuple[float, ...]
    criterion_params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    def with_thresholds(self, thresholds: list[float] | tuple[float, ...]) -> Manifest:
        if len(thresholds) != self.num_exits:
            raise BundleError(
                f"expected {self.num_exits} thresholds (one per exit), got {len(thresholds)}"
            )
        return replace(self, thresholds=tuple(float(t) for t in thresholds))

    def with_extra(self, **extra: Any) -> Manifest:
        return replace(self, extra={**self.extra, **extra})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "inputs": [
                {"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in self.inputs
            ],
            "segments": [
                {**asdict(s), "inputs": list(s.inputs), "carry": list(s.carry)}
                for s in self.segments
            ],
            "criterion": self.criterion,
            "criterion_params": dict(self.criterion_params),
            "thresholds": [None if math.isinf(t) else t for t in self.thresholds],
        }
        doc.update(self.extra)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        fmt = doc.get("format")
        if fmt != FORMAT:
            raise BundleError(f"manifest format is {fmt!r}; this edgeexit reads {FORMAT!r}")
        try:
            inputs = tuple(
                InputSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in doc["inputs"]
            )
            segments = tuple(
                SegmentSpec(
                    file=s["file"],
                    sha256=s["sha256"],
                    inputs=tuple(s["inputs"]),
                    carry=tuple(s["carry"]),
                    logits=s["logits"],
                    score=s["score"],
                )
                for s in doc["segments"]
            )
            criterion = doc["criterion"]
            thresholds = tuple(math.inf if t is None else float(t) for t in doc["thresholds"])
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"manifest is missing or mangles a required key: {err}") from err
        if not segments:
            raise BundleError("manifest lists no segments")
        if len(thresholds) != len(segments):
            raise BundleError(
                f"manifest has {len(thresholds)} thresholds for {len(segments)} exits"
            )
        if criterion not in CRITERIA:
            raise BundleError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
        known = {"format", "inputs", "segments", "criterion", "criterion_params", "thresholds"}
        return cls(
            inputs=inputs,
            segments=segments,
            criterion=criterion,
            thresholds=thresholds,
            criterion_params=dict(doc.get("criterion_params") or {}),
            extra={k: v for k, v in doc.items() if k not in known},
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Parse ``bundle_dir/manifest.json`` (without checking the segment files)."""
    path = Path(bundle_dir) / MANIFEST
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"bundle {bundle_dir} is not a directory; expected a bundle directory")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise BundleError(f"{path} is missing: not an edgeexit bundle") from err
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is unreadable: {err}") from err
    if not isinstance(doc, dict):
        raise BundleError(f"{path} is not a JSON object")
    return Manifest.from_json(doc)


def verify_segments(bundle_dir: str | os.PathLike, manifest: Manifest) -> list[Path]:
    """Check every segment file exists and matches its sha256; return their paths."""
    paths = []
    for seg in manifest.segments:
        path = Path(bundle_dir) / seg.file
        if not path.is_file():
            raise BundleError(f"segment file {path} is missing; re-export the bundle")
        if sha256_file(path) != seg.sha256:
            raise BundleError(
                f"segment file {path} does not match its sha256 in the manifest: "
                "it was modified after export; re-export the bundle"
            )
        paths.append(path)
    return paths


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Write the manifest atomically (temp file + rename), so a crash leaves the old one."""
    path = Path(bundle_dir) / MANIFEST
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_bundle_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out_dir`` only if the block succeeds.

    A failure anywhere inside leaves ``out_dir`` exactly as it was (absent or old).
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
