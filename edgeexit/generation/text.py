"""The byte-level tokenizer a bundle marked ``"tokenizer": "bytes"`` uses: a token is a byte
(0..255), and ids from 256 on (the end of text) are no text. Nothing to ship with it."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BYTES = "bytes"  # the manifest's name for it


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)


def decode(tokens: Iterable[int]) -> str:
    return bytes(int(t) for t in tokens if 0 <= int(t) < 256).decode("utf-8", errors="replace")
