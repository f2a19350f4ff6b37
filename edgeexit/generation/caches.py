"""Key/value caches allocated once and bound in place, and the one call that runs a graph.

Each layer's keys and values live in one array ``[1, max_positions, heads, head_dim]``: the
past of length P is its first P positions, one contiguous block, bound as the graph's
``past_*`` input without a copy, and the graph's new keys and values are bound as outputs
straight into positions P..P+T-1. Rolling back rejected tokens is moving a length: nothing
is copied or cleared (a later call overwrites those positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from edgeexit.errors import BundleError
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.runtime.buffers import bound_runner
from edgeexit.runtime.session import ORT_ERRORS

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


class LayerCache:
    """One layer's keys and values, ``[1, max_positions, heads, head_dim]`` each."""

    def __init__(self, manifest: DecoderManifest) -> None:
        shape = (1, manifest.max_positions, manifest.heads, manifest.head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.row = manifest.heads * manifest.head_dim * F32.itemsize  # bytes per position
        self.row_shape = shape[2:]


class GraphCall:
    """One session with its IOBinding: ``run`` binds what a call needs and runs it."""

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session, self.name = session, name
        self.io = session.io_binding()
        self.run_bound = bound_runner(session, self.io, ort.RunOptions())

    def bind(self, name: str, array: np.ndarray, *, output: bool = False) -> None:
        bind = self.io.bind_output if output else self.io.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def bind_rows(
        self, name: str, base: np.ndarray, start: int, count: int, row_bytes: int, output: bool
    ) -> None:
        """Positions start..start+count-1 of a cache array, in place."""
        bind = self.io.bind_output if output else self.io.bind_input
        shape = [1, count, *base.shape[2:]]
        bind(name, "cpu", 0, base.dtype, shape, base.ctypes.data + start * row_bytes)

    def run(self) -> None:
        try:
            self.run_bound()
        except ORT_ERRORS as err:
            raise BundleError(f"{self.name} failed in ONNX Runtime: {err}") from err


class SegmentRunner:
    """Decoder segment i: its layers' caches and the call that extends them."""

    def __init__(
        self,
        session: ort.InferenceSession,
        name: str,
        first: bool,
        caches: Sequence[LayerCache],
        dim: int,
        capacity: int,
    ) -> None:
        self.call = GraphCall(session, name)
        self.first = first
        self.caches = list(caches)
        self.out = np.empty((1, capacity, dim), dtype=np.float32)
        self.length = 0  # positions whose keys and values every layer here holds

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run on ``x`` (token ids [T] for segment 0, else hidden states [T, D]) at
        positions length..length+T-1; return the hidden states [T, D] (a view that the
        next call overwrites) and advance ``length`` by T."""
        t, start, call = len(x), self.length, self.call
        staged = np.ascontiguousarray(x)[None]  # alive until the run: it is bound
        call.bind("input_ids" if self.first else "hidden", staged)
        for j, cache in enumerate(self.caches):
            row = cache.row
            call.bind_rows(f"past_key_{j}", cache.keys, 0, start, row, output=False)
            call.bind_rows(f"past_value_{j}", cache.values, 0, start, row, output=False)
            call.bind_rows(f"key_{j}", cache.keys, start, t, row, output=True)
            call.bind_rows(f"value_{j}", cache.values, start, t, row, output=True)
        out = self.out[:, :t]
        call.bind("hidden_out", out, output=True)
        call.run()
        self.length = start + t
        return out[0]


class HeadRunner:
    """The head every exit shares: hidden [T, D] -> (logits [T, V], confidence [T])."""

    def __init__(self, session: ort.InferenceSession, manifest: DecoderManifest) -> None:
        self.call = GraphCall(session, manifest.head.file)
        capacity = manifest.max_positions
        self.logits = np.empty((1, capacity, manifest.vocab_size), dtype=np.float32)
        self.confidence = np.empty((1, capacity), dtype=np.float32)

    def run(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = len(hidden)
        call = self.call
        staged = np.ascontiguousarray(hidden)[None]  # alive until the run: it is bound
        call.bind("hidden", staged)
        call.bind("logits", self.logits[:, :t], output=True)
        call.bind("confidence", self.confidence[:, :t], output=True)
        call.run()
        return self.logits[0, :t], self.confidence[0, :t]
