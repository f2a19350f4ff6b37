"""Row gathers on device memory, for compacting carries that live on the GPU.

Carries that stay on the GPU cannot be gathered with numpy. Instead the runtime runs two
tiny ONNX graphs through ONNX Runtime on the same device: ``Gather(axis=0)`` into a
scratch buffer, then ``Identity`` back into the carry buffer (an output may not alias an
input). The graphs are serialized here by hand (a few protobuf fields), because the device
path must not import the ``onnx`` package.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgeexit.runtime.session import cpu_session

# ONNX TensorProto.DataType codes.
_ELEM_TYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.uint8): 2,
    np.dtype(np.int8): 3,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 9,
    np.dtype(np.float16): 10,
    np.dtype(np.float64): 11,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: varint (wire type 0) for ints, length-delimited (2) otherwise."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_info(name: str, elem_type: int, rank: int) -> bytes:
    dims = b"".join(_field(1, _field(2, f"d{i}")) for i in range(rank))  # symbolic dims
    tensor_type = _field(1, elem_type) + _field(2, dims)
    return _field(1, name) + _field(2, _field(1, tensor_type))  # ValueInfoProto


def row_graph(op: str, dtype: np.dtype, rank: int) -> bytes:
    """ModelProto bytes for ``y = Gather(x, idx, axis=0)`` or ``y = Identity(x)``."""
    elem = _ELEM_TYPES[np.dtype(dtype)]
    inputs = ["x", "idx"] if op == "Gather" else ["x"]
    node = b"".join(_field(1, n) for n in inputs) + _field(2, "y") + _field(4, op)
    if op == "Gather":
        node += _field(5, _field(1, "axis") + _field(3, 0) + _field(20, 2))  # INT attribute
    graph = _field(1, node) + _field(2, f"edgeexit_{op.lower()}")
    graph += _field(11, _tensor_info("x", elem, rank))
    if op == "Gather":
        graph += _field(11, _tensor_info("idx", _ELEM_TYPES[np.dtype(np.int64)], 1))
    graph += _field(12, _tensor_info("y", elem, rank))
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 8) + _field(7, graph) + _field(8, opset)  # ir_version 8, opset 13


class RowMover:
    """Compacts device buffers in place: ``rows[:m] = rows[keep]`` for m = len(keep)."""

    def __init__(self, providers: list[str], device: str) -> None:
        self.providers = providers
        self.device = device
        self._sessions: dict[tuple[str, np.dtype, int], ort.InferenceSession] = {}

    def _session(self, op: str, dtype: np.dtype, rank: int) -> ort.InferenceSession:
        key = (op, np.dtype(dtype), rank)
        if key not in self._sessions:
            self._sessions[key] = cpu_session(
                row_graph(op, dtype, rank), what=f"the {op} row graph", providers=self.providers
            )
        return self._sessions[key]

    def compact(self, buffer, scratch, k: int, keep: np.ndarray) -> None:
        """Gather rows ``keep`` of ``buffer[:k]`` into ``scratch``, then copy them back."""
        layout = buffer.layout
        rank = 1 + len(layout.row_shape)
        m = len(keep)
        gather = self._session("Gather", layout.dtype, rank)
        io = gather.io_binding()
        buffer.bind_input(io, "x", k)
        io.bind_cpu_input("idx", np.ascontiguousarray(keep, dtype=np.int64))
        scratch.bind_output(io, "y", m)
        gather.run_with_iobinding(io)
        copy = self._session("Identity", layout.dtype, rank)
        io = copy.io_binding()
        scratch.bind_input(io, "x", m)
        buffer.bind_output(io, "y", m)
        copy.run_with_iobinding(io)

    def upload(self, x: np.ndarray, buffer) -> None:
        """Copy host rows ``x`` into the first rows of a device buffer."""
        copy = self._session("Identity", buffer.layout.dtype, x.ndim)
        io = copy.io_binding()
        io.bind_cpu_input("x", np.ascontiguousarray(x))
        buffer.bind_output(io, "y", len(x))
        copy.run_with_iobinding(io)

    def download(self, buffer, k: int) -> np.ndarray:
        """A host copy of the first k rows of a device buffer."""
        copy = self._session("Identity", buffer.layout.dtype, 1 + len(buffer.layout.row_shape))
        io = copy.io_binding()
        buffer.bind_input(io, "x", k)
        io.bind_output("y", "cpu")
        copy.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]
