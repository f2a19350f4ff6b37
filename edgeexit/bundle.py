"""The bundle: the one contract between the host and the device (docs/bundle-format.md).

A bundle is a directory holding ``manifest.json`` and one ONNX file per segment. This
module reads, checks and writes manifests, and hands the runtime the verified bytes of each
segment. A manifest is untrusted input: every field is type- and range-checked (sizes
bounded before anything is allocated from them), every file it names must be a plain name
inside the bundle (no path, no symbolic link out), and every file ONNX Runtime would open
(segments and their external weights) must match its sha256 before anything else reads
it. The digests are the manifest's own: they catch a changed or swapped graph file, not a
manifest rewritten with new digests (docs/bundle-format.md, *What the digests cover*). It
imports neither torch nor onnx, so the device can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit import documents, files
from edgeexit.criteria import CRITERIA
from edgeexit.errors import BundleError, InputError, quoted
from edgeexit.onnxproto import ProtoError, external_data_files

FORMAT = "edgeexit.bundle/1"
# A bundle whose exits give tensors rather than class logits (``Manifest.output``): a new
# format, so that a reader that only knows logits refuses it instead of taking an image
# for logits (an argmax of pixels would be a silently wrong answer).
TENSOR_FORMAT = "edgeexit.bundle/2"
OUTPUT_KINDS = ("logits", "tensor", "tokens")
DECODER_FORMAT = "edgeexit.bundle/decoder-1"  # edgeexit.generation reads these
MANIFEST = "manifest.json"
BATCH_DIM = "batch"
SEGMENT_SUFFIXES = (".onnx", ".ort")
SHARED_WEIGHTS = "shared_weights.bin"  # weights several graphs hold, stored once
# A plain graph's optional second output: the sum of every element of its float inputs, a
# float32 scalar. NaN or inf when an input holds NaN or inf (and, rarely, when finite
# numbers overflow), so the runtime refuses such inputs by reading one number after the
# call instead of reducing them in numpy before it (docs/runtime.md, *Disabled exits*).
INPUT_SUM = "edgeexit_input_sum"
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
MAX_MANIFEST_BYTES = 16 << 20
# Bounds on the sizes a manifest declares, checked before anything is allocated from them
# (the runtime's probe batch, profile's synthetic inputs): a sample of at most 2**28
# elements (1 GiB of float32, beyond any edge model's input) over at most 32 axes (numpy's
# limit where it is smallest).
MAX_SAMPLE_ELEMENTS = 1 << 28
MAX_RANK = 32
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` holds ints, with the string ``"batch"`` for the batch axis."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ExternalFile:
    """A file of weights a segment stores outside its ONNX file (ONNX external data)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class GraphFile:
    """A graph file of the bundle with its sha256 and the external data it reads."""

    file: str
    sha256: str
    external_data: tuple[ExternalFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        if self.external_data:
            doc["external_data"] = _externals_json(self.external_data)
        return doc


def _externals_json(externals: Sequence[ExternalFile]) -> list[dict[str, str]]:
    return [{"file": e.file, "sha256": e.sha256} for e in externals]


@dataclass(frozen=True)
class SegmentSpec:
    """Segment i = backbone block i + exit head i, as one ONNX file.

    ``body``: the same block without its head (inputs in, ``carry`` out), which the
    runtime runs instead while the exit is disabled (its threshold is "never"), so that
    the head costs nothing; None for the last segment and in bundles without one.
    ``plain``: the plain network up to this exit as one graph (from the model inputs,
    every earlier block without its head, then this segment with its head); run instead
    of the chain while every earlier exit is disabled, so that such a chain costs what the
    plain network does (export writes it for the last segment).
    ``prefix``: this segment as it runs after every earlier exit disabled: the model
    inputs in, every earlier body, then this segment with its head, as one graph giving
    this segment's outputs (carry, logits, score); the first graph of a chain whose first
    enabled exit is this one, one ONNX Runtime call where the bodies and the segment took
    one each (export writes one for every segment between the first and the last).
    """

    file: str
    sha256: str
    inputs: tuple[str, ...]
    carry: tuple[str, ...]
    logits: str
    score: str
    external_data: tuple[ExternalFile, ...] = ()
    body: GraphFile | None = None
    plain: GraphFile | None = None
    prefix: GraphFile | None = None

    @property
    def has_head(self) -> bool:
        """False for a body (``headless``): no logits, no score."""
        return bool(self.logits)

    @property
    def other_graphs(self) -> tuple[GraphFile, ...]:
        """The graph files this segment lists besides its own: body, plain, prefix."""
        return tuple(g for g in (self.body, self.plain, self.prefix) if g is not None)

    @property
    def headless(self) -> SegmentSpec | None:
        """This segment as its body alone (no logits, no score), or None without one."""
        if self.body is None:
            return None
        b = self.body
        return replace(self, file=b.file, sha256=b.sha256, external_data=b.external_data,
                       logits="", score="", body=None, plain=None, prefix=None)  # fmt: skip

    def as_plain(self, inputs: tuple[str, ...]) -> SegmentSpec | None:
        """The ``plain`` graph as a one-segment chain taking the model ``inputs``, or None.
        It gives this exit's logits alone: the last exit of a chain takes every sample,
        so no score is computed."""
        if self.plain is None:
            return None
        w = self.plain
        return replace(self, file=w.file, sha256=w.sha256, external_data=w.external_data,
                       inputs=inputs, carry=(), score="", body=None, plain=None,
                       prefix=None)  # fmt: skip

    def as_prefix(self, inputs: tuple[str, ...]) -> SegmentSpec | None:
        """The ``prefix`` graph as the first segment of a chain, taking the model
        ``inputs`` and giving this segment's outputs, or None."""
        if self.prefix is None:
            return None
        w = self.prefix
        return replace(self, file=w.file, sha256=w.sha256, external_data=w.external_data,
                       inputs=inputs, body=None, plain=None, prefix=None)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": list(self.inputs),
            "carry": list(self.carry),
            "logits": self.logits,
            "score": self.score,
        }
        if self.external_data:
            doc["external_data"] = _externals_json(self.external_data)
        if self.body is not None:
            doc["body"] = self.body.to_json()
        if self.plain is not None:
            doc["plain"] = self.plain.to_json()
        if self.prefix is not None:
            doc["prefix"] = self.prefix.to_json()
        return doc


def threshold_json(threshold: float) -> float | None:
    """A threshold as JSON holds it: "never" (+inf) is null, in every document edgeexit
    writes (manifests, reports, --json), since JSON has no infinity."""
    return None if math.isinf(threshold) else float(threshold)


def thresholds_json(thresholds) -> list[float | None]:
    return [threshold_json(t) for t in thresholds]


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``.

    ``thresholds[i]`` is the exit score a sample needs to leave at exit i; ``inf`` means no
    sample leaves there (written as JSON ``null``). The last exit always exits.
    ``output``: what every exit gives (the graph output each segment names ``logits``):
    "logits" ``[batch, classes]``, or "tensor", any tensor with the batch first.
    ``extra`` keeps every other key (precision, target, calibration report...) untouched.
    """

    inputs: tuple[InputSpec, ...]
    segments: tuple[SegmentSpec, ...]
    criterion: str
    thresholds: tuple[float, ...]
    criterion_params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    output: str = "logits"

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    def with_thresholds(self, thresholds: list[float] | tuple[float, ...]) -> Manifest:
        if len(thresholds) != self.num_exits:
            raise BundleError(
                f"expected {self.num_exits} thresholds (one per exit), got {len(thresholds)}"
            )
        values = tuple(float(t) for t in thresholds)
        if any(math.isnan(t) or t == -math.inf for t in values):
            raise BundleError(f"thresholds {values} hold NaN or -inf; expected numbers or inf")
        return replace(self, thresholds=values)

    def capped(self, max_exit: int) -> Manifest:
        """The chain up to exit ``max_exit``: every sample leaves by it, and the segments
        after it are not part of the chain (a runtime never opens them)."""
        if isinstance(max_exit, bool) or not isinstance(max_exit, int):
            raise InputError(f"`max_exit` is {max_exit!r}; expected an exit index")
        if not 0 <= max_exit < self.num_exits:
            raise InputError(
                f"`max_exit` is {max_exit}; expected 0..{self.num_exits - 1}, an exit of the bundle"
            )
        keep = max_exit + 1
        last = replace(self.segments[max_exit], body=None, prefix=None)
        segments = (*self.segments[:max_exit], last)
        return replace(self, segments=segments, thresholds=self.thresholds[:keep])

    def with_extra(self, **extra: Any) -> Manifest:
        return replace(self, extra={**self.extra, **extra})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT if self.output == "logits" else TENSOR_FORMAT,
            "inputs": [
                {"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in self.inputs
            ],
            "segments": [s.to_json() for s in self.segments],
            "criterion": self.criterion,
            "criterion_params": dict(self.criterion_params),
            "thresholds": thresholds_json(self.thresholds),
        }
        if self.output != "logits":
            doc["output"] = self.output
        doc.update(self.extra)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        """Parse and check a manifest document; BundleError names the first bad field."""
        if not isinstance(doc, dict):
            raise BundleError(f"manifest is a JSON {type(doc).__name__}; expected an object")
        fmt = doc.get("format")
        if fmt == DECODER_FORMAT:
            raise BundleError(
                "this is a decoder bundle (a language model): run it with `edgeexit generate`"
            )
        if fmt not in (FORMAT, TENSOR_FORMAT):
            raise BundleError(
                f"manifest format is {quoted(fmt)}; this edgeexit reads {FORMAT!r} and "
                f"{TENSOR_FORMAT!r}"
            )
        output = doc.get("output", "logits")
        if (output == "logits") != (fmt == FORMAT) or output not in OUTPUT_KINDS:
            raise BundleError(
                f"manifest output is {quoted(output)} in format {fmt!r}; expected 'logits' in "
                f"{FORMAT!r}, and 'tensor' or 'tokens' in {TENSOR_FORMAT!r}"
            )
        inputs = tuple(input_spec(x, f"inputs[{k}]") for k, x in enumerate(_list(doc, "inputs")))
        segments = tuple(
            _segment(s, f"segments[{k}]") for k, s in enumerate(_list(doc, "segments"))
        )
        if not inputs or not segments:
            raise BundleError("manifest lists no inputs or no segments; expected at least one")
        _check_chain(inputs, segments)
        criterion = doc.get("criterion")
        if not isinstance(criterion, str) or criterion not in CRITERIA:
            raise BundleError(
                f"manifest criterion is {quoted(criterion)}; expected one of {', '.join(CRITERIA)}"
            )
        problem = CRITERIA[criterion].output_problem(output)
        if problem:
            raise BundleError(f"manifest: {problem} (output {output!r}); re-export the bundle")
        params = doc.get("criterion_params", {})
        if not isinstance(params, dict):
            raise BundleError("manifest criterion_params must be an object")
        thresholds = tuple(
            _threshold(t, f"thresholds[{k}]") for k, t in enumerate(_list(doc, "thresholds"))
        )
        if len(thresholds) != len(segments):
            raise BundleError(
                f"manifest has {len(thresholds)} thresholds for {len(segments)} exits; "
                "expected one per exit"
            )
        _check_extra(doc, len(segments), output)
        known = {"format", "inputs", "segments", "criterion", "criterion_params", "thresholds",
                 "output"}  # fmt: skip
        return cls(
            inputs=inputs,
            segments=segments,
            criterion=criterion,
            thresholds=thresholds,
            criterion_params=dict(params),
            extra={k: v for k, v in doc.items() if k not in known},
            output=output,
        )


# -- field checks --------------------------------------------------------------------------


def _list(doc: dict, key: str, where: str = "manifest") -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise BundleError(f"{where} {key!r} must be a list, got {type(value).__name__}")
    return value


def _text(doc: Any, key: str, where: str) -> str:
    if not isinstance(doc, dict):
        raise BundleError(f"manifest {where} must be an object, got {type(doc).__name__}")
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"manifest {where}.{key} must be a non-empty string, got {quoted(value)}")
    return value


def _names(doc: dict, key: str, where: str) -> tuple[str, ...]:
    value = _list(doc, key, f"manifest {where}")
    if not all(isinstance(v, str) and v for v in value):
        raise BundleError(
            f"manifest {where}.{key} must hold non-empty strings, got {quoted(value)}"
        )
    return tuple(value)


def plain_file_name(name: str, where: str) -> str:
    """``name`` if it names a file directly inside the bundle, else BundleError."""
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise BundleError(
            f"manifest {where} is {quoted(name)}; expected a plain file name inside the bundle"
        )
    return name


def _sha(doc: dict, where: str) -> str:
    value = _text(doc, "sha256", where)
    if not _SHA256.match(value):
        raise BundleError(f"manifest {where}.sha256 is not 64 lowercase hex digits")
    return value


def input_spec(doc: Any, where: str) -> InputSpec:
    name, dtype = _text(doc, "name", where), _text(doc, "dtype", where)
    if dtype not in INPUT_DTYPES:
        raise BundleError(
            f"manifest {where}.dtype is {quoted(dtype)}; expected one of {', '.join(INPUT_DTYPES)}"
        )
    shape = _list(doc, "shape", f"manifest {where}")
    return InputSpec(name, dtype, _sample_shape(shape, f"{where}.shape"))


def _sample_shape(shape: list, where: str) -> tuple[int | str, ...]:
    """'batch', then positive sizes within MAX_RANK axes and MAX_SAMPLE_ELEMENTS elements."""
    dims_ok = all(is_count(d) and d >= 1 for d in shape[1:])
    if shape[:1] != [BATCH_DIM] or not dims_ok:
        raise BundleError(
            f"manifest {where} is {quoted(shape)}; expected 'batch' then positive sizes"
        )
    if len(shape) - 1 > MAX_RANK:
        raise BundleError(
            f"manifest {where} has {len(shape) - 1} axes after 'batch'; expected at most {MAX_RANK}"
        )
    if math.prod(shape[1:]) > MAX_SAMPLE_ELEMENTS:
        raise BundleError(
            f"manifest {where} is {quoted(shape)}: over {MAX_SAMPLE_ELEMENTS:,} elements per "
            "sample, edgeexit's bound for a manifest (checked before anything is allocated)"
        )
    return tuple(shape)


def is_count(value: Any) -> bool:
    """An int and not a bool (JSON true would pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _segment(doc: Any, where: str) -> SegmentSpec:
    file = graph_file(doc, where)
    body, plain, prefix = doc.get("body"), doc.get("plain"), doc.get("prefix")
    return SegmentSpec(
        file=file.file,
        sha256=file.sha256,
        inputs=_names(doc, "inputs", where),
        carry=_names(doc, "carry", where),
        logits=_text(doc, "logits", where),
        score=_text(doc, "score", where),
        external_data=file.external_data,
        body=None if body is None else graph_file(body, f"{where}.body"),
        plain=None if plain is None else graph_file(plain, f"{where}.plain"),
        prefix=None if prefix is None else graph_file(prefix, f"{where}.prefix"),
    )


def graph_file(doc: Any, where: str) -> GraphFile:
    """One graph entry of a manifest (any bundle kind): its file, sha256, external data."""
    file = plain_file_name(_text(doc, "file", where), f"{where}.file")
    if not file.endswith(SEGMENT_SUFFIXES):
        raise BundleError(f"manifest {where}.file {quoted(file)} is not an .onnx or .ort file")
    externals = []
    listed = doc.get("external_data", [])
    if not isinstance(listed, list):
        raise BundleError(
            f"manifest {where}.external_data must be a list, got {type(listed).__name__}"
        )
    for k, e in enumerate(listed):
        at = f"{where}.external_data[{k}]"
        externals.append(ExternalFile(plain_file_name(_text(e, "file", at), at), _sha(e, at)))
    return GraphFile(file, _sha(doc, where), tuple(externals))


def _check_chain(inputs: tuple[InputSpec, ...], segments: tuple[SegmentSpec, ...]) -> None:
    """Segment 0 takes the model inputs; segment i takes as many inputs as i-1 carries."""
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise BundleError(f"manifest inputs repeat a name: {quoted(names)}; expected one each")
    if list(segments[0].inputs) != names:
        raise BundleError(
            f"manifest segments[0].inputs {quoted(list(segments[0].inputs))} are not the model "
            f"inputs {quoted(names)}"
        )
    for k in range(1, len(segments)):
        if len(segments[k].inputs) != len(segments[k - 1].carry):
            raise BundleError(
                f"manifest segments[{k}] takes {len(segments[k].inputs)} inputs but "
                f"segments[{k - 1}] carries {len(segments[k - 1].carry)}"
            )
    if segments[-1].carry:
        raise BundleError("manifest's last segment carries outputs; expected none")
    if segments[-1].body is not None:
        raise BundleError("manifest's last segment has a body; the last exit always runs its head")
    for k in (0, len(segments) - 1):
        if segments[k].prefix is not None:
            raise BundleError(
                f"manifest segments[{k}] has a prefix; expected one only between the first "
                "segment (which takes the model inputs itself) and the last (which has its "
                "plain graph)"
            )


def _threshold(value: Any, where: str) -> float:
    if value is None:
        return math.inf
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):  # not a number at all ("0.5" is refused too)
        number = math.nan
    except OverflowError as err:  # an integer of hundreds of digits
        raise BundleError(f"manifest {where} is beyond any float; expected a number") from err
    if math.isnan(number) or not isinstance(value, int | float):
        raise BundleError(
            f"manifest {where} is {quoted(value)}; expected a number, or null for 'nobody "
            "exits here'"
        )
    if number == -math.inf:
        raise BundleError(f"manifest {where} is -inf; expected a finite number or null")
    return number


def _check_extra(doc: dict, num_exits: int, output: str) -> None:
    """The optional keys edgeexit itself reads back: ``max_exit`` (the runtime caps the
    chain there), ``output_shape``, ``num_classes`` and ``tokens`` (compile and inspect),
    ``finished_tokens`` (the one policy the runtime implements)."""
    cap = doc.get("max_exit")
    if cap is not None and not (is_count(cap) and 0 <= cap < num_exits):
        raise BundleError(
            f"manifest max_exit is {quoted(cap)}; expected an exit index 0..{num_exits - 1}"
        )
    for key in ("num_classes", "tokens"):
        value = doc.get(key)
        if value is not None and not (is_count(value) and 1 <= value <= MAX_SAMPLE_ELEMENTS):
            raise BundleError(
                f"manifest {key} is {quoted(value)}; expected a count 1..{MAX_SAMPLE_ELEMENTS:,}"
            )
    shape = doc.get("output_shape")
    if shape is not None:
        if not isinstance(shape, list):
            raise BundleError(f"manifest output_shape must be a list, got {type(shape).__name__}")
        _sample_shape(shape, "output_shape")
    if output == "tokens" and doc.get("finished_tokens", "dropped") != "dropped":
        raise BundleError(
            f"manifest finished_tokens is {quoted(doc.get('finished_tokens'))}; this edgeexit "
            "runs per-token exits with 'dropped' only"
        )


# Only the batch axis of a bundle's inputs is free: every other size is the export's.
FIXED_SIZE_HINT = (
    "; the bundle was exported for that size: pad or cut the data to it, or export again "
    "with example inputs of the size you need"
)


def round_threshold(threshold: float, score_dtype: np.dtype) -> float:
    """``threshold`` as the nearest value of the score's dtype, as a Python float.

    Exit decisions compare a score with its threshold. Rounded once to the score's dtype,
    the comparison gives the same answer whether numpy compares a batch's float32 scores
    or Python compares one score as a double: without it, a threshold within float32
    rounding of a score splits the two (a sample would leave at another exit alone than
    in a batch).
    """
    if math.isinf(threshold):
        return threshold
    code = _PACK_CODES.get(np.dtype(score_dtype))
    if (
        code is not None
    ):  # struct rounds as numpy's cast does (to nearest, ties to even), 10x faster
        try:
            return struct.unpack(code, struct.pack(code, threshold))[0]
        except OverflowError:  # beyond the dtype's range: it rounds to infinity
            return math.copysign(math.inf, threshold)
    with np.errstate(over="ignore"):
        return float(np.asarray(threshold, dtype=np.float64).astype(score_dtype))


_PACK_CODES = {np.dtype(np.float16): "e", np.dtype(np.float32): "f", np.dtype(np.float64): "d"}


# -- reading and writing -------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Parse and check ``bundle_dir/manifest.json`` (without reading the segment files)."""
    return Manifest.from_json(read_manifest_document(bundle_dir))


def read_manifest_document(bundle_dir: str | os.PathLike) -> Any:
    """The JSON of ``bundle_dir/manifest.json``, whatever its format: the folder checked,
    a swap that a crash interrupted put back, the file a regular one of sane size."""
    folder = Path(bundle_dir)
    if not folder.exists():
        files.clean_stale(folder)  # a swap killed between its two renames: put it back
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is not a directory; expected a bundle directory")
    path = folder / MANIFEST
    if path.is_symlink():
        raise BundleError(f"{path} is a symbolic link; a bundle holds its own manifest")
    if path.exists() and not path.is_file():
        raise BundleError(f"{path} is not a regular file; expected the bundle's manifest")
    return documents.read_json(
        path,
        "bundle manifest",
        BundleError,
        max_bytes=MAX_MANIFEST_BYTES,
        missing="is missing: not an edgeexit bundle",
    )


@dataclass(frozen=True)
class SegmentSource:
    """A verified segment: its path, and its bytes when ONNX Runtime can load it from
    memory (no external data), which leaves no moment for the file to change after its
    sha256 was checked."""

    path: Path
    model: bytes | None


def _regular_file(folder: Path, name: str, what: str) -> Path:
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError as err:
        raise BundleError(f"{what} {path} is missing; re-export the bundle") from err
    except OSError as err:
        raise BundleError(f"{what} {path} is unreadable: {files.os_reason(err)}") from err
    if stat.S_ISLNK(mode):
        raise BundleError(f"{what} {path} is a symbolic link; a bundle holds its own files")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{what} {path} is not a regular file")
    return path


def load_segments(bundle_dir: str | os.PathLike, manifest: Manifest) -> list[SegmentSource]:
    """Check every file the segments need (confined to the bundle, sha256 as listed) and
    return them ready for ONNX Runtime; BundleError names the first that fails."""
    return load_graphs(bundle_dir, manifest.segments)


def load_graphs(bundle_dir: str | os.PathLike, graphs: Sequence[Any]) -> list[SegmentSource]:
    """``load_segments`` for any graph files listed with ``file``, ``sha256`` and
    ``external_data`` (a classifier's segments, a decoder's segments and head)."""
    folder = Path(bundle_dir)
    sources = []
    digests: dict[str, str] = {}  # external files several graphs read, hashed once
    for seg in graphs:
        path = _regular_file(folder, seg.file, "segment file")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BundleError(f"segment file {path} is unreadable: {files.os_reason(err)}") from err
        if hashlib.sha256(data).hexdigest() != seg.sha256:
            raise BundleError(
                f"segment file {path} does not match its sha256 in the manifest: "
                "it was modified after export; re-export the bundle"
            )
        listed = {e.file: e.sha256 for e in seg.external_data}
        named = _external_names(data, seg)
        for name in named:
            if name not in listed:
                raise BundleError(
                    f"{seg.file} reads weights from {name!r}, which the manifest does not "
                    "list with a sha256; re-export the bundle"
                )
        for name, digest in listed.items():
            ext = _regular_file(folder, name, "external weights")
            if name not in digests:
                digests[name] = sha256_file(ext)
            if digests[name] != digest:
                raise BundleError(
                    f"external weights {ext} do not match their sha256 in the manifest: "
                    "modified after export; re-export the bundle"
                )
        sources.append(SegmentSource(path, None if named else data))
    return sources


def _external_names(data: bytes, seg: SegmentSpec) -> list[str]:
    if not seg.file.endswith(".onnx"):
        return []  # the ORT format keeps every weight inside the file
    try:
        names = external_data_files(data)
    except ProtoError as err:
        raise BundleError(f"segment file {seg.file} is not an ONNX model: {err}") from err
    for name in names:
        plain_file_name(name, f"{seg.file} external data location")
    return names


def verify_segments(bundle_dir: str | os.PathLike, manifest: Manifest) -> list[Path]:
    """``load_segments``, returning only the verified paths (for host-side tools)."""
    return [s.path for s in load_segments(bundle_dir, manifest)]


def external_files(bundle_dir: Path, segment_file: str) -> tuple[ExternalFile, ...]:
    """The external-data files ``segment_file`` names, with their sha256, for its spec."""
    data = (bundle_dir / segment_file).read_bytes()
    names = _external_names(data, SegmentSpec(segment_file, "", (), (), "", ""))
    return tuple(ExternalFile(n, sha256_file(bundle_dir / n)) for n in names)


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Write the manifest atomically (temp file + rename), so a crash leaves the old one.

    The file keeps its permission bits; the JSON is strict (no NaN literals)."""
    files.write_json_atomic(Path(bundle_dir) / MANIFEST, manifest.to_json(), what="manifest")


@contextlib.contextmanager
def atomic_bundle_dir(
    out_dir: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out_dir`` only if the block succeeds.

    ``out_dir`` must be new, an empty folder or an edgeexit bundle (``files.check_output``;
    ``inputs`` may not lie inside it). A failure anywhere inside leaves it exactly as it was.
    """
    with files.atomic_dir(out_dir, "bundle", inputs=inputs) as tmp:
        yield tmp


def check_bundle_output(
    out_dir: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = ()
) -> Path:
    """Refuse ``out_dir`` now, before long work, if a bundle cannot be written there."""
    return files.check_output(out_dir, "bundle", inputs=inputs).path
