"""Weights that several graphs of a bundle hold, stored once.

Each segment is exported as a graph of its own, so a module that several segments use
(ALBERT's one shared layer, an embedding or a head shared by exits) is copied into each:
an ALBERT bundle was 3.5x its one-graph model. ``share_weights`` finds the initializers
that two or more graphs hold (same dtype, shape and bytes), writes each once into
``shared_weights.bin`` and makes the graphs point at it as ONNX external data (location,
offset, length). ONNX Runtime reads external data itself (memory-mapping it where the
offset allows: offsets are aligned for that); the manifest lists the file with its sha256
for every graph that reads it, as for any external data, and the device checks it before
a session opens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeexit import files
from edgeexit.bundle import SHARED_WEIGHTS as SHARED_FILE
from edgeexit.bundle import GraphFile, SegmentSpec, external_files, sha256_file

MIN_BYTES = 256  # smaller tensors (shapes, scales) stay inside their graph
# A page: ONNX Runtime maps external data whose offset is page-aligned. Only tensors of a
# page or more are aligned (mapping a smaller one saves nothing; the padding would cost).
ALIGN = 4096
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                "uint64_data", "string_data")  # fmt: skip


@dataclass(frozen=True)
class SharedWeights:
    """What ``share_weights`` did: tensors stored once, and bytes the bundle no longer
    holds twice."""

    tensors: int
    file_bytes: int
    saved_bytes: int


def share_weights(folder: Path, graph_files: Sequence[str]) -> SharedWeights:
    """Rewrite the ONNX graphs ``graph_files`` in ``folder`` so that the initializers they
    have in common live once in ``folder/shared_weights.bin``. Graphs that share nothing
    are left untouched; without anything in common no file is written (and a stale one
    from an earlier call is removed)."""
    onnx_files = [f for f in graph_files if f.endswith(".onnx")]
    models = {f: onnx.load(str(folder / f), load_external_data=True) for f in onnx_files}
    uses: dict[tuple, list[tuple[str, onnx.TensorProto]]] = {}
    payload: dict[tuple, bytes] = {}
    for file, model in models.items():
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.nbytes < MIN_BYTES or array.dtype == object:
                continue
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).digest())
            uses.setdefault(key, []).append((file, tensor))
            payload[key] = data
    shared = {k: v for k, v in uses.items() if len({file for file, _ in v}) >= 2}
    stale = folder / SHARED_FILE
    if not shared:
        stale.unlink(missing_ok=True)  # only ever one edgeexit wrote: graphs were inlined
        return SharedWeights(0, 0, 0)
    blob, saved = bytearray(), 0
    for key, tensors in shared.items():
        data = payload[key]
        if len(data) >= ALIGN:
            blob += b"\0" * (-len(blob) % ALIGN)
        offset = len(blob)
        blob += data
        saved += len(data) * (len(tensors) - 1)
        for _, tensor in tensors:
            _point_at(tensor, offset, len(data))
    files.write_bytes_atomic(folder / SHARED_FILE, bytes(blob), what="shared weights")
    changed = {file for tensors in shared.values() for file, _ in tensors}
    for file in changed:
        # serialized by hand: onnx.save would try to write external data itself
        files.write_bytes_atomic(folder / file, models[file].SerializeToString(), what="ONNX graph")
    return SharedWeights(len(shared), len(blob), saved)


def store_once(
    folder: Path, segments: Sequence[SegmentSpec]
) -> tuple[list[SegmentSpec], SharedWeights]:
    """``share_weights`` over every graph the specs name (each segment, its body, its
    plain-network and prefix graphs), then the specs with each file's sha256 and external data as
    now written. Export and compile both end with it, so a manifest always lists what its
    graphs read."""
    graphs = [f for s in segments for f in (s.file, *(g.file for g in s.other_graphs))]
    done = share_weights(folder, graphs)

    def recorded(graph: GraphFile | None) -> GraphFile | None:
        if graph is None:
            return None
        file = graph.file
        return GraphFile(file, sha256_file(folder / file), external_files(folder, file))

    specs = []
    for s in segments:
        own = recorded(GraphFile(s.file, ""))
        specs.append(replace(s, sha256=own.sha256, external_data=own.external_data,
                             body=recorded(s.body), plain=recorded(s.plain),
                             prefix=recorded(s.prefix)))  # fmt: skip
    return specs, done


def _point_at(tensor: onnx.TensorProto, offset: int, length: int) -> None:
    for name in _DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", SHARED_FILE), ("offset", str(offset)),
                       ("length", str(length))):  # fmt: skip
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
