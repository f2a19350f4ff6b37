"""Exit criteria decided in the runtime rather than inside the segment graphs.

Every criterion but one is computed in the segment's graph as its ``score`` output. PABEE's
patience needs state across exits (how many consecutive exits agreed), so it lives here.
"""

from __future__ import annotations

import numpy as np


def patience_update(
    state: tuple[np.ndarray, np.ndarray] | None, logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PABEE: the counter is 0 at exit 0, then +1 while the argmax stays the same, else 0."""
    pred = logits.argmax(axis=1)
    if state is None:
        return np.zeros(len(pred), dtype=np.float32), pred
    counter, prev = state
    return np.where(pred == prev, counter + 1, 0).astype(np.float32), pred
