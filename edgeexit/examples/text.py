"""Text that is on every machine without a download: the Python standard library's source.

Byte-level (``edgeexit.generation.text``): a token is a byte (0..255) and 256 ends a text,
so no tokenizer ships with a bundle. The files are read in sorted order, so the same Python
gives the same corpus.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

EOS = 256
VOCAB = 257


def stdlib_corpus(max_bytes: int = 4 << 20) -> np.ndarray:
    """Up to ``max_bytes`` of the standard library's top-level modules, as token ids
    (each file followed by EOS). The test suites are left out: they read least like code."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts += [np.frombuffer(data, dtype=np.uint8).astype(np.int64), np.array([EOS])]
        size += len(data) + 1
        if size >= max_bytes:
            break
    if not parts:
        raise FileNotFoundError(f"no Python sources under {root}")
    return np.concatenate(parts)[:max_bytes]
