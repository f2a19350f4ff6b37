"""What a bundle holds, without running it: ``edgeexit inspect`` and ``describe_bundle``.

Reads the manifest (strictly, as the runtime or the generator does), checks every file
against its sha256, and counts each graph's operators from the ONNX bytes with
``onnxproto`` (no ``onnx`` import: this runs on a device). A classifier bundle gives a
``BundleInfo``; a decoder bundle (a language model) a ``DecoderInfo``, with the memory its
caches will take and its generation settings. Never raises for a bundle that fails its
integrity check: the check is one of the things it reports.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeexit.bundle import (
    DECODER_FORMAT,
    MANIFEST,
    SHARED_WEIGHTS,
    Manifest,
    load_graphs,
    load_segments,
    read_manifest_document,
    threshold_json,
)
from edgeexit.errors import BundleError
from edgeexit.generation.caches import Memory, memory_needed
from edgeexit.generation.graphs import in_words, needed_onnxruntime
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.measure.memory import available_mb, graphs_resident_mb, segment_resident_mb
from edgeexit.onnxproto import ProtoError, op_counts
from edgeexit.runtime.session import resolve_config
from edgeexit.split import carry_bytes, read_split
from edgeexit.targets import load_target


@dataclass(frozen=True)
class SegmentInfo:
    index: int
    file: str
    size_bytes: int  # the segment file and its own external data (shared weights apart)
    ops: dict[str, int]  # operator -> nodes, most frequent first
    carry: tuple[str, ...]
    threshold: float
    resident_mb: float | None = None  # measured on request: RSS growth when it is opened
    body_bytes: int | None = None  # its body (the block without the head), if it has one
    plain_bytes: int | None = None  # the plain network up to this exit as one graph, if any
    prefix_bytes: int | None = None  # every earlier body and this segment as one graph, if any

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": self.file,
            "size_bytes": self.size_bytes,
            "nodes": sum(self.ops.values()),
            "ops": self.ops,
            "carry": list(self.carry),
            "threshold": threshold_json(self.threshold),
            "resident_mb": self.resident_mb,
            "body_bytes": self.body_bytes,
            "plain_bytes": self.plain_bytes,
            "prefix_bytes": self.prefix_bytes,
        }


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    manifest: Manifest
    segments: tuple[SegmentInfo, ...]
    integrity: str  # 'ok' or what failed
    calibration: dict[str, Any] = field(default_factory=dict)
    shared_bytes: int = 0  # weights several segments hold, stored once

    @property
    def intact(self) -> bool:
        return self.integrity == "ok"

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        extra = m.extra
        return {
            "bundle": str(self.path),
            "kind": "classifier",
            "integrity": self.integrity,
            "inputs": [
                {"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in m.inputs
            ],  # fmt: skip
            "criterion": m.criterion,
            "precision": extra.get("precision", "fp32"),
            "target": extra.get("target"),
            "num_classes": extra.get("num_classes"),
            "output": m.output,  # logits, tensor (an image...) or tokens (per-token exits)
            "output_shape": extra.get("output_shape"),
            "tokens": extra.get("tokens"),
            "opset": extra.get("opset"),
            "exporter": extra.get("exporter"),
            "edgeexit_version": extra.get("edgeexit_version"),
            "segments": [s.to_json() for s in self.segments],
            "shared_weights_bytes": self.shared_bytes,
            "calibration": self.calibration or None,
            "split": _split(m),
        }


def _split(manifest: Manifest) -> dict[str, Any] | None:
    """Where a split bundle leaves the device, or why its split no longer holds."""
    if "split" not in manifest.extra:
        return None
    try:
        split = read_split(manifest)
    except BundleError as err:
        return {"problem": str(err)}
    return {
        "at": split.at,
        "encoding": split.encoding,
        "carry_bytes": carry_bytes(split.carry, split.encoding),
        "server_exits": list(range(split.at + 1, manifest.num_exits)),
        "split_id": split.split_id,
        "check": split.check,
    }


def describe_bundle(
    bundle_dir: str | os.PathLike, *, memory: bool = False
) -> BundleInfo | DecoderInfo:
    """What ``bundle_dir`` holds: a ``BundleInfo``, or a ``DecoderInfo`` for a decoder
    bundle. BundleError only when there is no readable, valid manifest.

    ``memory``: also open each graph (a segment with its head; a decoder's segments and
    head) with default session settings and record the resident memory it adds
    (``measure.memory``; None where the OS does not say, and for a bundle that fails its
    integrity check).
    """
    path = Path(bundle_dir)
    doc = read_manifest_document(path)
    if isinstance(doc, dict) and doc.get("format") == DECODER_FORMAT:
        return describe_decoder(path, DecoderManifest.from_json(doc, source=str(path / MANIFEST)),
                                memory=memory)  # fmt: skip
    manifest = Manifest.from_json(doc)
    try:
        sources = load_segments(path, manifest)
        # bodies, plain and prefix graphs too: a runtime checks every file at load
        load_graphs(path, [g for s in manifest.segments for g in s.other_graphs])
        integrity = "ok"
    except BundleError as err:
        sources, integrity = [None] * manifest.num_exits, str(err)
    resident: list[float | None] = [None] * manifest.num_exits
    if memory and integrity == "ok":
        config = resolve_config(load_target(None), None, None)  # as Runtime(bundle) opens it
        resident = segment_resident_mb(path, manifest, config)
    segments = tuple(
        replace(_segment(path, i, spec, threshold, source), resident_mb=mb)
        for i, (spec, threshold, source, mb) in enumerate(
            zip(manifest.segments, manifest.thresholds, sources, resident)
        )
    )
    shared = _size(path / SHARED_WEIGHTS) if (path / SHARED_WEIGHTS).is_file() else 0
    return BundleInfo(path, manifest, segments, integrity, _calibration(manifest), shared)


def _segment(folder: Path, index: int, spec, threshold: float, source) -> SegmentInfo:
    """Operators are counted only from verified bytes (the ones load_segments read and
    checked): a bundle that fails its check gets none, and the integrity line says why."""
    ops = _ops(source)
    body, plain, prefix = (None if g is None else _graph_bytes(folder, g)
                           for g in (spec.body, spec.plain, spec.prefix))  # fmt: skip
    return SegmentInfo(index, spec.file, _graph_bytes(folder, spec), ops, tuple(spec.carry),
                       threshold, body_bytes=body, plain_bytes=plain,
                       prefix_bytes=prefix)  # fmt: skip


def _graph_bytes(folder: Path, graph) -> int:
    """A graph file and its own external data (the shared weights are counted apart)."""
    own = [e.file for e in graph.external_data if e.file != SHARED_WEIGHTS]
    return sum(_size(folder / n) for n in [graph.file, *own])


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _calibration(manifest: Manifest) -> dict[str, Any]:
    """The calibration block, summarised: budget, what was certified, what to expect."""
    block = manifest.extra.get("calibration")
    if not isinstance(block, dict):
        return {}
    expected = block.get("expected") or {}
    guarantee = block.get("guarantee") or {}
    costs = block.get("profile") or {}
    return {
        "budget": block.get("budget"),
        "certified": guarantee.get("certified_budget") or None,
        "confidence": guarantee.get("confidence"),
        "expected_accuracy": expected.get("accuracy"),
        "expected_mean_latency_ms": expected.get("mean_latency_ms"),
        "exit_shares": expected.get("exit_shares"),
        "samples": block.get("samples"),
        "costs_from": costs.get("source"),
    }


# -- decoder bundles ------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphInfo:
    """One graph of a decoder bundle: segment i (``index``) or the shared head (None)."""

    index: int | None
    file: str
    size_bytes: int
    layers: int
    ops: dict[str, int]
    resident_mb: float | None = None
    draft: bool = False  # one of the quantized draft's copies

    @property
    def name(self) -> str:
        name = "head" if self.index is None else f"segment {self.index}"
        return f"draft {name}" if self.draft else name

    def to_json(self) -> dict[str, Any]:
        return {"graph": self.name,
                "file": self.file, "size_bytes": self.size_bytes, "layers": self.layers,
                "nodes": sum(self.ops.values()), "ops": self.ops,
                "resident_mb": self.resident_mb}  # fmt: skip


@dataclass(frozen=True)
class DecoderInfo:
    """A decoder bundle: its sizes, graphs, the memory its caches and buffers take (from
    the manifest, as ``Generator`` allocates them), what this machine has available, its
    generation settings, and the integrity check."""

    path: Path
    manifest: DecoderManifest
    graphs: tuple[GraphInfo, ...]
    integrity: str
    memory: Memory
    available_bytes: int | None

    @property
    def intact(self) -> bool:
        return self.integrity == "ok"

    @property
    def fits(self) -> bool | None:
        """Whether this machine has the memory for the caches and buffers now."""
        return (
            None
            if self.available_bytes is None
            else self.memory.total_bytes <= self.available_bytes
        )

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "bundle": str(self.path),
            "kind": "decoder",
            "integrity": self.integrity,
            "vocab_size": m.vocab_size,
            "dim": m.dim,
            "heads": m.heads,
            "head_dim": m.head_dim,
            "kv_heads": m.kv_heads,
            "attention": m.attention,
            "needs_onnxruntime": in_words(need) if (need := needed_onnxruntime(m)) else None,
            "precision": m.precision,
            "quantization": m.extra.get("quantization"),
            "layers": m.layers,
            "max_positions": m.max_positions,
            "eos_token_ids": list(m.eos_token_ids),
            "tokenizer": m.extra.get("tokenizer"),
            "opset": m.extra.get("opset"),
            "graphs": [g.to_json() for g in self.graphs],
            "memory": {
                **self.memory.to_json(),
                "available_bytes": self.available_bytes,
                "fits": self.fits,
            },  # fmt: skip
            "generation": m.generation or None,
        }


def describe_decoder(path: Path, manifest: DecoderManifest, *, memory: bool = False) -> DecoderInfo:
    """``describe_bundle`` for a decoder bundle whose manifest is read and checked."""
    try:
        sources = load_graphs(path, manifest.all_graphs)
        integrity = "ok"
    except BundleError as err:
        sources, integrity = [None] * len(manifest.all_graphs), str(err)
    resident: list[float | None] = [None] * len(manifest.all_graphs)
    if memory and integrity == "ok":
        config = resolve_config(load_target(None), None, None)  # as Generator(bundle) opens it
        resident = graphs_resident_mb(sources, config)
    indices = [*range(manifest.num_exits), None]
    if manifest.draft is not None:
        indices += [*range(manifest.num_exits - 1), None]
    model = len(manifest.graphs)
    graphs = tuple(
        GraphInfo(i, g.file, _graph_bytes(path, g), g.layers, _ops(source), mb, n >= model)
        for n, (i, g, source, mb) in enumerate(zip(indices, manifest.all_graphs, sources, resident))
    )
    free = available_mb()
    available = None if free is None else int(free * 2**20)
    return DecoderInfo(path, manifest, graphs, integrity, memory_needed(manifest), available)


def _ops(source) -> dict[str, int]:
    """Operators counted from verified bytes only (None: the check failed)."""
    if source is None:
        return {}
    with contextlib.suppress(OSError, ProtoError):  # ONNX Runtime says why, at load
        return op_counts(source.model if source.model is not None else source.path.read_bytes())
    return {}
