"""The bytes between a device and its server: a few named arrays with a batch axis.

::

    b"EEX1" | header length (uint32, little-endian) | header (JSON) | payload

The header names the split, the row count and each tensor (name, encoding, dtype, the
shape of one row); the payload is each tensor's bytes in order, an int8 one preceded by
its float32 scales (one per row). A message is checked whole before anything is allocated
for it: the header against what the reader expects (names, dtypes, shapes, encodings, a row
bound), the payload's length against the sizes the header implies. Both directions use it:
a request carries the carry, an answer the logits and exit indices.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeexit.errors import InputError
from edgeexit.split import encoded_row_bytes

MAGIC = b"EEX1"
_PREFIX = struct.Struct("<4sI")
MAX_HEADER_BYTES = 64 << 10
CONTENT_TYPE = "application/x-edgeexit"
_INT8_MAX = 127.0


class WireError(InputError):
    """A message that is not what the reader expects (the server answers 400 with it)."""


@dataclass(frozen=True)
class Expected:
    """One tensor a reader takes: its name, dtype, one row's shape, and the encodings it
    accepts for it."""

    name: str
    dtype: np.dtype
    row_shape: tuple[int, ...]
    encodings: tuple[str, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.row_shape)


def encode(split_id: str, tensors: Sequence[tuple[str, np.ndarray, str]]) -> bytes:
    """``tensors``: (name, array with the batch first, encoding): "float32" / "raw" (as it
    is), "float16", or "int8" (a float32 scale per row: max |x| / 127)."""
    rows = len(tensors[0][1])
    parts: list[bytes] = []
    header = []
    for name, array, encoding in tensors:
        if len(array) != rows:
            raise ValueError(f"tensor {name!r} has {len(array)} rows; expected {rows}")
        header.append(
            {
                "name": name,
                "encoding": encoding,
                "dtype": str(array.dtype),
                "shape": list(array.shape[1:]),
            }  # fmt: skip
        )
        if encoding == "float16":
            parts.append(array.astype(np.float16).tobytes())
        elif encoding == "int8":
            flat = array.reshape(rows, -1)
            peak = np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(rows, np.float32)
            scales = (peak / _INT8_MAX).astype(np.float32)
            safe = np.where(scales > 0, scales, 1).astype(np.float32)
            q = np.clip(np.rint(flat / safe[:, None]), -_INT8_MAX, _INT8_MAX).astype(np.int8)
            parts += [scales.tobytes(), q.tobytes()]
        else:
            parts.append(np.ascontiguousarray(array).tobytes())
    head = json.dumps({"split": split_id, "rows": rows, "tensors": header}).encode()
    return b"".join([_PREFIX.pack(MAGIC, len(head)), head, *parts])


def decode(
    body: bytes, split_id: str, expected: Sequence[Expected], *, max_rows: int
) -> tuple[np.ndarray, ...]:
    """The tensors of ``body`` as arrays of the expected dtypes, or a WireError."""
    if len(body) < _PREFIX.size:
        raise WireError(f"message of {len(body)} bytes is too short for an edgeexit message")
    magic, size = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise WireError("message does not start with b'EEX1'; expected an edgeexit message")
    if size > MAX_HEADER_BYTES or _PREFIX.size + size > len(body):
        raise WireError(f"message header of {size} bytes is too long or cut off")
    try:
        head = json.loads(body[_PREFIX.size : _PREFIX.size + size])
    except (ValueError, UnicodeDecodeError) as err:
        raise WireError(f"message header is not JSON: {err}") from None
    if not isinstance(head, dict):
        raise WireError("message header is not a JSON object")
    if head.get("split") != split_id:
        raise WireError(
            f"message is for split {str(head.get('split'))[:40]!r}; this side serves split "
            f"{split_id!r} (device and server hold different bundles or splits)"
        )
    rows = head.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or not 1 <= rows <= max_rows:
        raise WireError(f"message rows is {rows!r}; expected 1..{max_rows}")
    tensors = head.get("tensors")
    if not isinstance(tensors, list) or len(tensors) != len(expected):
        raise WireError(f"message holds {_count(tensors)} tensors; expected {len(expected)}")
    sizes = [_size(t, e, rows) for t, e in zip(tensors, expected)]
    offset = _PREFIX.size + size
    if offset + sum(sizes) != len(body):
        raise WireError(
            f"message payload is {len(body) - offset} bytes; its header says {sum(sizes)}"
        )
    arrays = []
    for t, e, n in zip(tensors, expected, sizes):
        arrays.append(_array(body, offset, t["encoding"], e, rows))
        offset += n
    return tuple(arrays)


def _count(value: object) -> int | str:
    return len(value) if isinstance(value, list) else "no list of"


def _size(doc: object, e: Expected, rows: int) -> int:
    if not isinstance(doc, dict) or doc.get("name") != e.name:
        got = doc.get("name") if isinstance(doc, dict) else doc
        raise WireError(f"message tensor {str(got)[:40]!r} is not the expected {e.name!r}")
    encoding = doc.get("encoding")
    if encoding not in e.encodings:
        raise WireError(
            f"message tensor {e.name!r} is encoded {str(encoding)[:20]!r}; expected one of "
            f"{', '.join(e.encodings)}"
        )
    if doc.get("dtype") != str(e.dtype) or doc.get("shape") != list(e.row_shape):
        raise WireError(
            f"message tensor {e.name!r} is {str(doc.get('dtype'))[:20]} "
            f"{str(doc.get('shape'))[:60]}; expected {e.dtype} {list(e.row_shape)} per row"
        )
    return rows * encoded_row_bytes(e.dtype, e.elements, encoding)


def _array(body: bytes, offset: int, encoding: str, e: Expected, rows: int) -> np.ndarray:
    shape = (rows, *e.row_shape)
    if encoding == "float16":
        half = np.frombuffer(body, np.float16, rows * e.elements, offset)
        return half.astype(e.dtype).reshape(shape)
    if encoding == "int8":
        scales = np.frombuffer(body, np.float32, rows, offset)
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise WireError(f"message tensor {e.name!r} has a scale that is negative or not finite")
        q = np.frombuffer(body, np.int8, rows * e.elements, offset + 4 * rows)
        x = q.reshape(rows, -1).astype(np.float32) * scales[:, None]
        return x.astype(e.dtype, copy=False).reshape(shape)
    return np.frombuffer(body, e.dtype, rows * e.elements, offset).reshape(shape).copy()
