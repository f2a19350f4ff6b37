"""The byte-level tokenizer a bundle marked ``"tokenizer": "bytes"`` uses: a token is a byte
(0..255), and ids from 256 on (the end of text) are no text. Nothing to ship with it.
``pieces`` decodes a stream of tokens as it comes."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

import numpy as np

from edgeexit.errors import InputError

BYTES = "bytes"  # the manifest's name for it


def encode(text: str, what: str = "the prompt") -> np.ndarray:
    """The UTF-8 bytes of ``text`` as token ids. Text that has no UTF-8 form (a lone
    surrogate: what Python makes of a command-line argument or a JSON escape that was not
    UTF-8) is refused rather than guessed at."""
    try:
        data = text.encode()
    except UnicodeEncodeError as err:
        raise InputError(
            f"{what} is not UTF-8 text (character {err.start} is {text[err.start]!r}, "
            "a byte or escape that is no character); pass its bytes as token ids instead"
        ) from err
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def decode(tokens: Iterable[int]) -> str:
    return bytes(int(t) for t in tokens if 0 <= int(t) < 256).decode("utf-8", errors="replace")


def pieces(tokens: Iterable[int]) -> Iterator[str]:
    """``decode`` piece by piece, for a stream: each token's text as soon as it is whole (a
    character of several bytes waits for its last byte). The pieces join into ``decode``'s
    text of the same tokens."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        piece = decoder.decode(bytes([int(token)])) if 0 <= int(token) < 256 else ""
        if piece:
            yield piece
    rest = decoder.decode(b"", final=True)
    if rest:
        yield rest
