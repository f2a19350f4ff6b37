"""The byte-level tokenizer a bundle marked ``"tokenizer": "bytes"`` uses: a token is a byte
(0..255), and ids from 256 on (the end of text) are no text. Nothing to ship with it."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edgeexit.errors import InputError

BYTES = "bytes"  # the manifest's name for it


def encode(text: str) -> np.ndarray:
    """The UTF-8 bytes of ``text`` as token ids. Text that has no UTF-8 form (a lone
    surrogate: what Python makes of a command-line argument or a JSON escape that was not
    UTF-8) is refused rather than guessed at."""
    try:
        data = text.encode()
    except UnicodeEncodeError as err:
        raise InputError(
            f"the prompt is not UTF-8 text (character {err.start} is {text[err.start]!r}, "
            "a byte or escape that is no character); pass its bytes as token ids instead"
        ) from err
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def decode(tokens: Iterable[int]) -> str:
    return bytes(int(t) for t in tokens if 0 <= int(t) < 256).decode("utf-8", errors="replace")
