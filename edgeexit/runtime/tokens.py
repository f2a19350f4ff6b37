"""Per-token exits: each token leaves at the first exit whose score for it passes that
exit's threshold, and the segments after it run on the remaining tokens only.

A bundle exported with ``output="tokens"`` gives per-token logits ``[batch, tokens,
classes]`` and a score per token at every exit, and every carry tensor has the token axis
second. After exit i, the finished tokens' logits are final and are written back into
place; every carry tensor keeps only the remaining tokens (compaction on the token axis,
as batch compaction does on the batch axis), so later segments never see a finished token
again: it neither takes a result there nor serves as context (``finished_tokens:
"dropped"`` in the manifest; DyVTE drops tokens likewise, DToP keeps some as context).
That is exactly the full-length chain with each finished token masked out of attention,
which tests/test_token_exits.py checks.

Samples run one at a time (their tokens leave at different exits, and a batch of ragged
lengths has no dense layout); the graphs take any number of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

import numpy as np
import onnxruntime as ort

from edgeexit.bundle import Manifest
from edgeexit.errors import BundleError, first_line
from edgeexit.runtime.session import ORT_ERRORS


class TokenRunner:
    """The segments of a per-token-exit bundle, run sample by sample with token compaction."""

    def __init__(self, manifest: Manifest, sessions: Sequence[ort.InferenceSession]) -> None:
        self.manifest = manifest
        self.sessions = list(sessions)
        self.outputs = [[*s.carry, s.logits, s.score] for s in manifest.segments]

    def run(
        self, xs: Sequence[np.ndarray], thresholds: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """(logits [batch, tokens, classes], exit index [batch, tokens], ms per segment)."""
        n = len(xs[0])
        logits = exits = None
        seconds = [0.0] * len(self.sessions)
        for b in range(n):
            sample_logits, sample_exits = self._sample([x[b : b + 1] for x in xs],
                                                       thresholds, seconds)  # fmt: skip
            if logits is None:
                logits = np.empty((n, *sample_logits.shape), dtype=np.float32)
                exits = np.empty((n, len(sample_exits)), dtype=np.int64)
            logits[b], exits[b] = sample_logits, sample_exits
        return logits, exits, [s * 1e3 for s in seconds]

    def _sample(
        self, xs: list[np.ndarray], thresholds: Sequence[float], seconds: list[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        segments, last = self.manifest.segments, len(self.sessions) - 1
        feeds = dict(zip(segments[0].inputs, xs))
        positions = logits = exits = None  # every token's place, and its answer so far
        for i, session in enumerate(self.sessions):
            t = perf_counter()
            try:
                *carry, step_logits, score = session.run(self.outputs[i], feeds)
            except ORT_ERRORS as err:
                raise BundleError(f"{segments[i].file} failed: {first_line(err)}") from err
            seconds[i] += perf_counter() - t
            if positions is None:  # segment 0 sees every token
                tokens = step_logits.shape[1]
                positions = np.arange(tokens)
                logits = np.empty(step_logits.shape[1:], dtype=np.float32)
                exits = np.full(tokens, last, dtype=np.int64)
            if i == last:
                logits[positions] = step_logits[0]
                exits[positions] = i
                break
            leaving = score[0] >= thresholds[i]
            if leaving.any():
                logits[positions[leaving]] = step_logits[0, leaving]
                exits[positions[leaving]] = i
                keep = np.flatnonzero(~leaving)
                if not keep.size:
                    break  # every token has its answer: the later segments never run
                positions = positions[keep]
                carry = [np.ascontiguousarray(c[:, keep]) for c in carry]
            feeds = dict(zip(segments[i + 1].inputs, carry))
        return logits, exits
