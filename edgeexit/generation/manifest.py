"""The manifest of a decoder bundle (``edgeexit.bundle/decoder-1``), docs/bundle-format.md.

A decoder bundle holds one graph per segment (a group of decoder layers; segment 0 starts
with the token embedding) and one head graph that every exit shares. Graph inputs and
outputs follow fixed names, so the manifest only counts layers:

- segment i: ``input_ids`` [1, T] int64 (segment 0) or ``hidden`` [1, T, D] float32, and
  ``past_key_j``/``past_value_j`` [1, P, H, Dh] for each of its layers j; returns
  ``hidden_out`` [1, T, D] and ``key_j``/``value_j`` [1, T, H, Dh] for the T new positions
  (P..P+T-1, P read from the past's length);
- head: ``hidden`` [1, T, D] -> ``logits`` [1, T, V] and ``confidence`` [1, T] (the max
  softmax probability).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeexit import files
from edgeexit.bundle import (
    DECODER_FORMAT,
    MANIFEST,
    ExternalFile,
    plain_file_name,
    read_manifest_document,
)
from edgeexit.bundle import (
    FORMAT as CLASSIFIER_FORMAT,
)
from edgeexit.errors import BundleError

FORMAT = DECODER_FORMAT


@dataclass(frozen=True)
class GraphFile:
    """One graph of the bundle; ``external_data`` as for a classifier segment."""

    file: str
    sha256: str
    layers: int = 0  # decoder layers in it (0: the head)
    external_data: tuple[ExternalFile, ...] = ()


@dataclass(frozen=True)
class DecoderManifest:
    vocab_size: int
    dim: int
    heads: int
    head_dim: int
    max_positions: int  # the caches' length: prompt plus generated tokens
    eos_token_id: int | None
    segments: tuple[GraphFile, ...]
    head: GraphFile
    generation: dict[str, Any] = field(default_factory=dict)  # what calibrate chose
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    @property
    def graphs(self) -> tuple[GraphFile, ...]:
        """Every graph file, for verification: the segments, then the shared head."""
        return (*self.segments, self.head)

    def with_generation(self, choice: dict[str, Any]) -> DecoderManifest:
        return replace(self, generation=dict(choice))

    def to_json(self) -> dict[str, Any]:
        def graph(g: GraphFile) -> dict[str, Any]:
            doc: dict[str, Any] = {"file": g.file, "sha256": g.sha256}
            if g.layers:
                doc["layers"] = g.layers
            return doc

        return {
            "format": FORMAT,
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "max_positions": self.max_positions,
            "eos_token_id": self.eos_token_id,
            "segments": [graph(s) for s in self.segments],
            "head": graph(self.head),
            "generation": dict(self.generation),
            **self.extra,
        }

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "manifest") -> DecoderManifest:
        if isinstance(doc, dict) and doc.get("format") == CLASSIFIER_FORMAT:
            raise BundleError(
                "this is a classifier bundle, not a language model: run it with `edgeexit run`"
            )
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise BundleError(f"{source}: format is {got!r}; expected {FORMAT!r}")
        try:
            sizes = {k: _count(doc[k], k) for k in ("vocab_size", "dim", "heads", "head_dim")}
            segments = tuple(_graph(s, f"segments[{i}]") for i, s in enumerate(doc["segments"]))
            head = _graph(doc["head"], "head")
            max_positions = _count(doc["max_positions"], "max_positions")
            eos = doc.get("eos_token_id")
        except KeyError as err:
            raise BundleError(f"{source} has no {err}; re-export the bundle") from err
        if not segments or any(s.layers < 1 for s in segments):
            raise BundleError(f"{source}: every segment needs its count of layers (>= 1)")
        if eos is not None and not (isinstance(eos, int) and 0 <= eos < sizes["vocab_size"]):
            raise BundleError(f"{source}: eos_token_id {eos!r} is not a token id")
        if sizes["heads"] * sizes["head_dim"] != sizes["dim"]:
            raise BundleError(f"{source}: heads x head_dim must equal dim")
        generation = doc.get("generation") or {}
        if not isinstance(generation, dict):
            raise BundleError(f"{source}: generation must be an object")
        known = {"format", "segments", "head", "max_positions", "eos_token_id", "generation"}
        extra = {k: v for k, v in doc.items() if k not in known and k not in sizes}
        return cls(**sizes, max_positions=max_positions, eos_token_id=eos, segments=segments,
                   head=head, generation=dict(generation), extra=extra)  # fmt: skip


def read_decoder_manifest(bundle_dir: str | os.PathLike) -> DecoderManifest:
    doc = read_manifest_document(bundle_dir)
    return DecoderManifest.from_json(doc, source=str(Path(bundle_dir) / MANIFEST))


def write_decoder_manifest(bundle_dir: str | os.PathLike, manifest: DecoderManifest) -> None:
    files.write_json_atomic(Path(bundle_dir) / MANIFEST, manifest.to_json(), what="manifest")


def _graph(doc: Any, where: str) -> GraphFile:
    if not isinstance(doc, dict):
        raise BundleError(f"{where} must be an object")
    digest = doc.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise BundleError(f"{where}.sha256 must be a sha256 hex digest")
    layers = doc.get("layers", 0)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise BundleError(f"{where}.layers must be a count")
    name = doc.get("file")
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}.file must be a file name")
    return GraphFile(plain_file_name(name, f"{where}.file"), digest, layers)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"manifest {what} must be a positive integer, got {value!r}")
    return value
