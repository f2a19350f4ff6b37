"""Key/value caches allocated once and bound in place, and the one call that runs a graph.

Each layer's keys and values live in one array ``[1, max_positions, heads, head_dim]``: the
past of length P is its first P positions, one contiguous block, bound as the graph's
``past_*`` input without a copy, and the graph's new keys and values are bound as outputs
straight into positions P..P+T-1. Rolling back rejected tokens is moving a length: nothing
is copied or cleared (a later call overwrites those positions).

ONNX Runtime reads and writes bound memory by address and length, with no idea where an
array ends: every bind here checks its rows against the array first, so that a wrong
length from anywhere (a bug, a setting that slipped through) raises instead of writing
past the caches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from edgeexit.errors import BundleError, InputError
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.runtime.buffers import bound_runner, host_binders
from edgeexit.runtime.session import ORT_ERRORS

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


class LayerCache:
    """One layer's keys and values, ``[1, max_positions, heads, head_dim]`` each."""

    def __init__(self, manifest: DecoderManifest) -> None:
        shape = (1, manifest.max_positions, manifest.heads, manifest.head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        # Addresses taken once: reading ``ndarray.ctypes.data`` costs ~2 µs, and a step
        # binds every layer's keys and values twice. The arrays never move.
        self.keys_at, self.values_at = self.keys.ctypes.data, self.values.ctypes.data
        self.row = manifest.heads * manifest.head_dim * F32.itemsize  # bytes per position
        self.row_shape = list(shape[2:])


class GraphCall:
    """One session with its IOBinding: bind host memory by address, then ``run``."""

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session, self.name = session, name
        self.io = session.io_binding()
        self.bind_input, self.bind_output = host_binders(self.io)
        self.run_bound = bound_runner(session, self.io, ort.RunOptions())

    def run(self) -> None:
        try:
            self.run_bound()
        except ORT_ERRORS as err:
            raise BundleError(f"{self.name} failed in ONNX Runtime: {err}") from err


class Staging:
    """A graph input's rows, copied into one array allocated once (its address known)."""

    def __init__(self, capacity: int, row_shape: Sequence[int], dtype: np.dtype) -> None:
        self.array = np.empty((capacity, *row_shape), dtype=dtype)
        self.at, self.dtype, self.row_shape = self.array.ctypes.data, dtype, list(row_shape)

    def bind(self, call: GraphCall, name: str, rows: np.ndarray) -> None:
        if not 0 < len(rows) <= len(self.array) or rows.shape[1:] != self.array.shape[1:]:
            raise InputError(
                f"{call.name}: {name} of shape {list(rows.shape)} does not fit its "
                f"{list(self.array.shape)} buffer"
            )
        self.array[: len(rows)] = rows
        call.bind_input(name, self.dtype, [1, len(rows), *self.row_shape], self.at)


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
        self.input_name = "input_ids" if first else "hidden"
        self.staged = Staging(capacity, [] if first else [dim], I64 if first else F32)
        self.caches = [
            (cache, f"past_key_{j}", f"past_value_{j}", f"key_{j}", f"value_{j}")
            for j, cache in enumerate(caches)
        ]
        self.out = np.empty((1, capacity, dim), dtype=np.float32)
        self.out_at, self.dim = self.out.ctypes.data, dim
        self.capacity = min([capacity, *(c.keys.shape[1] for c in caches)])  # positions
        self.length = 0  # positions whose keys and values every layer here holds

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run on ``x`` (token ids [T] for segment 0, else hidden states [T, D]) at
        positions length..length+T-1; return the hidden states [T, D] (a view that the
        next call overwrites) and advance ``length`` by T."""
        t, start, call = len(x), self.length, self.call
        if not 0 <= start <= self.capacity - t:
            raise InputError(
                f"{call.name}: {t} new positions after {start} do not fit the caches' "
                f"{self.capacity} positions"
            )
        self.staged.bind(call, self.input_name, x)
        bind_input, bind_output = call.bind_input, call.bind_output
        for cache, past_key, past_value, key, value in self.caches:
            past, new = [1, start, *cache.row_shape], [1, t, *cache.row_shape]
            offset = start * cache.row  # the new positions, in place after the past
            bind_input(past_key, F32, past, cache.keys_at)
            bind_input(past_value, F32, past, cache.values_at)
            bind_output(key, F32, new, cache.keys_at + offset)
            bind_output(value, F32, new, cache.values_at + offset)
        bind_output("hidden_out", F32, [1, t, self.dim], self.out_at)
        call.run()
        self.length = start + t
        return self.out[0, :t]


class HeadRunner:
    """The head every exit shares: hidden [T, D] -> (logits [T, V], confidence [T])."""

    def __init__(self, session: ort.InferenceSession, manifest: DecoderManifest) -> None:
        self.call = GraphCall(session, manifest.head.file)
        capacity, self.vocab = manifest.max_positions, manifest.vocab_size
        self.staged = Staging(capacity, [manifest.dim], F32)
        self.logits = np.empty((1, capacity, self.vocab), dtype=np.float32)
        self.confidence = np.empty((1, capacity), dtype=np.float32)
        self.logits_at, self.confidence_at = self.logits.ctypes.data, self.confidence.ctypes.data

    def run(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, call = len(hidden), self.call
        self.staged.bind(call, "hidden", hidden)
        call.bind_output("logits", F32, [1, t, self.vocab], self.logits_at)
        call.bind_output("confidence", F32, [1, t], self.confidence_at)
        call.run()
        return self.logits[0, :t], self.confidence[0, :t]
