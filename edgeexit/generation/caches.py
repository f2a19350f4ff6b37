"""Key/value caches allocated once and bound in place, and the one call that runs a graph.

Each layer's keys and values live in one array ``[1, max_positions, kv_heads, head_dim]``
(``kv_heads`` is ``heads`` but under grouped-query attention): the past of length P is its
first P positions, one contiguous block, bound as the graph's ``past_*`` input without a
copy, and the graph's new keys and values are bound as outputs straight into positions
P..P+T-1. Rolling back rejected tokens is moving a length: nothing
is copied or cleared (a later call overwrites those positions).

A fused bundle's caches are ``[1, kv_heads, max_positions, head_dim]``, bound whole as both
the past and the present of its GroupQueryAttention nodes, which write the new rows in
place after the ``seqlens_k`` they are told: bound once when the runner is made, never again.

ONNX Runtime reads and writes bound memory by address and length, with no idea where an
array ends: every bind here checks its rows against the array first, so that a wrong
length from anywhere (a bug, a setting that slipped through) raises instead of writing
past the caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edgeexit.errors import BundleError, InputError
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.measure.memory import available_mb
from edgeexit.runtime.buffers import bound_runner, host_binders
from edgeexit.runtime.session import ORT_ERRORS

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)
I32 = np.dtype(np.int32)


@dataclass(frozen=True)
class Memory:
    """What a ``Generator`` allocates for a bundle, from its manifest alone (bytes)."""

    cache_bytes: int  # every layer's keys and values, max_positions long
    buffer_bytes: int  # staged inputs, outputs, the head's logits, the hidden states kept

    @property
    def total_bytes(self) -> int:
        return self.cache_bytes + self.buffer_bytes

    def to_json(self) -> dict[str, int]:
        return {"cache_bytes": self.cache_bytes, "buffer_bytes": self.buffer_bytes,
                "total_bytes": self.total_bytes}  # fmt: skip


def memory_needed(m: DecoderManifest) -> Memory:
    """The bytes of every array ``LayerCache``, ``SegmentRunner``, ``HeadRunner`` and the
    Generator's kept hidden states allocate (float32, int64 token ids)."""
    f32, positions = F32.itemsize, m.max_positions
    caches = 2 * m.layers * positions * m.kv_heads * m.head_dim * f32
    staged = positions * (I64.itemsize + (m.num_exits - 1) * m.dim * f32)  # segment inputs
    outputs = m.num_exits * positions * m.dim * f32  # segment outputs
    head = positions * (m.dim + m.vocab_size + 1) * f32  # staged input, logits, confidence
    kept = positions * m.dim * f32
    draft = 0  # a draft's runners: the same buffers, for every segment but the last
    if m.draft is not None:
        draft = staged - positions * m.dim * f32 + outputs - positions * m.dim * f32 + head
    return Memory(caches, staged + outputs + head + kept + draft)


def check_memory(m: DecoderManifest, where: str) -> Memory:
    """``memory_needed``, refused before anything is allocated when the machine has not
    that much available (an allocation past it would swap, or be killed when touched)."""
    need = memory_needed(m)
    free_mb = available_mb()
    if free_mb is not None and need.total_bytes > free_mb * 2**20:
        raise BundleError(
            f"{where} needs {bytes_in_words(need.total_bytes)} for its caches and buffers "
            f"({bytes_in_words(need.cache_bytes)} of caches: {m.layers} layers x {m.max_positions} "
            f"positions x {m.kv_heads} heads x {m.head_dim}, keys and values); this machine has "
            f"{bytes_in_words(free_mb * 2**20)} available"
        )
    return need


def bytes_in_words(n: float) -> str:
    """'3.2 GiB', '512.0 KiB', '12.0 B'."""
    units, i = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


class LayerCache:
    """One layer's keys and values, ``[1, max_positions, kv_heads, head_dim]`` each
    (fused: ``[1, kv_heads, max_positions, head_dim]``)."""

    def __init__(self, manifest: DecoderManifest) -> None:
        m = manifest
        shape = ((1, m.kv_heads, m.max_positions, m.head_dim) if m.fused
                 else (1, m.max_positions, m.kv_heads, m.head_dim))  # fmt: skip
        self.shape, self.positions = list(shape), m.max_positions
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        # Addresses taken once: reading ``ndarray.ctypes.data`` costs ~2 µs, and a step
        # binds every layer's keys and values twice. The arrays never move.
        self.keys_at, self.values_at = self.keys.ctypes.data, self.values.ctypes.data
        self.row = manifest.kv_heads * manifest.head_dim * F32.itemsize  # bytes per position
        self.row_shape = list(shape[2:])


class GraphCall:
    """One session with its IOBinding: bind host memory by address, then ``run``.

    A binding stays until it is replaced, and replacing one costs the next run ~15-20 µs
    in ONNX Runtime (a fifth of a decoding step's Python, measured on the demo decoder),
    so ``keep_input``/``keep_output`` rebind only when the shape or the address changes:
    decoding one token at a time then rebinds nothing."""

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session, self.name = session, name
        self.io = session.io_binding()
        self.bind_input, self.bind_output = host_binders(self.io)
        self.run_bound = bound_runner(session, self.io, ort.RunOptions())
        self._bound: dict[str, tuple[list[int], int]] = {}  # name -> (shape, address)

    def keep_input(self, name: str, dtype: np.dtype, shape: list[int], at: int) -> None:
        if self._bound.get(name) != (shape, at):
            self.bind_input(name, dtype, shape, at)
            self._bound[name] = (shape, at)

    def keep_output(self, name: str, dtype: np.dtype, shape: list[int], at: int) -> None:
        if self._bound.get(name) != (shape, at):
            self.bind_output(name, dtype, shape, at)
            self._bound[name] = (shape, at)

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
        call.keep_input(name, self.dtype, [1, len(rows), *self.row_shape], self.at)


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
        self.out = np.empty((1, capacity, dim), dtype=np.float32)
        self.out_at, self.dim = self.out.ctypes.data, dim
        self.capacity = min([capacity, *(c.positions for c in caches)])
        self.length = 0  # positions whose keys and values every layer here holds
        self._take(caches)

    def _take(self, caches: Sequence[LayerCache]) -> None:
        """The caches' names in the graph: bound at every call, past and new rows apart."""
        self.caches = [
            (cache, f"past_key_{j}", f"past_value_{j}", f"key_{j}", f"value_{j}")
            for j, cache in enumerate(caches)
        ]

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


class FusedSegmentRunner(SegmentRunner):
    """A fused segment (``SegmentRunner``'s contract): its caches are bound once, whole, as
    both past and present; a call binds its input, its output and the past's length."""

    def _take(self, caches: Sequence[LayerCache]) -> None:
        """Each cache bound once, whole, as its layer's past and present."""
        call = self.call
        for j, cache in enumerate(caches):
            for kind, at in (("key", cache.keys_at), ("value", cache.values_at)):
                call.bind_input(f"past_{kind}_{j}", F32, cache.shape, at)
                call.bind_output(f"present_{kind}_{j}", F32, cache.shape, at)
        # the lengths: two int32 arrays bound once, their values written before each call
        self.seqlens = np.zeros(1, dtype=np.int32)
        self.total = np.zeros((), dtype=np.int32)
        call.bind_input("seqlens_k", I32, [1], self.seqlens.ctypes.data)
        call.bind_input("total_sequence_length", I32, [], self.total.ctypes.data)

    def run(self, x: np.ndarray) -> np.ndarray:
        """As ``SegmentRunner.run``."""
        t, start, call = len(x), self.length, self.call
        if not 0 < t <= self.capacity - start or start < 0:
            raise InputError(
                f"{call.name}: {t} new positions after {start} do not fit the caches' "
                f"{self.capacity} positions"
            )
        self.staged.bind(call, self.input_name, x)
        self.seqlens[0] = start + t - 1
        self.total[()] = start + t
        call.keep_output("hidden_out", F32, [1, t, self.dim], self.out_at)
        call.run()
        self.length = start + t
        return self.out[0, :t]


class HeadRunner:
    """The head every exit shares: hidden [T, D] -> (logits [T, V], confidence [T])."""

    def __init__(
        self, session: ort.InferenceSession, manifest: DecoderManifest, name: str | None = None
    ) -> None:
        self.call = GraphCall(session, name or manifest.head.file)
        capacity, self.vocab = manifest.max_positions, manifest.vocab_size
        self.staged = Staging(capacity, [manifest.dim], F32)
        self.logits = np.empty((1, capacity, self.vocab), dtype=np.float32)
        self.confidence = np.empty((1, capacity), dtype=np.float32)
        self.logits_at, self.confidence_at = self.logits.ctypes.data, self.confidence.ctypes.data

    def run(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, call = len(hidden), self.call
        self.staged.bind(call, "hidden", hidden)
        call.keep_output("logits", F32, [1, t, self.vocab], self.logits_at)
        call.keep_output("confidence", F32, [1, t], self.confidence_at)
        call.run()
        return self.logits[0, :t], self.confidence[0, :t]
