"""Run every exit of a chain of in-memory ONNX segments on the host, with no early exit.

Compilation needs this twice: to record each segment's fp32 inputs as calibration feeds, and
to compare every exit's accuracy after quantization with fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeexit.bundle import Manifest
from edgeexit.errors import TargetError
from edgeexit.runtime.session import cpu_session


@dataclass(frozen=True)
class ChainOutputs:
    """Per segment: the feeds it was given (one dict per batch); per exit: logits and scores."""

    feeds: list[list[dict[str, np.ndarray]]]
    logits: list[np.ndarray]
    scores: list[np.ndarray]


def host_sessions(
    models: Sequence[Any], *, threads: int = 0, optimization: str = "all"
) -> list[Any]:
    """CPU sessions for evaluation on the host (threads 0: ONNX Runtime's default).

    ``optimization``: "all" runs this host's fused kernels; "basic" leaves quantized graphs'
    QuantizeLinear/DequantizeLinear pairs unfused, so int8 numerics are simulated in fp32,
    the same on every CPU."""
    return [
        cpu_session(
            m.SerializeToString(),
            what=f"segment {i} for evaluation",
            threads=threads,
            optimization=optimization,
            error=TargetError,
        )  # fmt: skip
        for i, m in enumerate(models)
    ]


def run_chain(
    sessions: Sequence[Any],
    manifest: Manifest,
    inputs: Sequence[np.ndarray],
    *,
    batch_size: int = 64,
) -> ChainOutputs:
    """Every sample through every segment, in batches."""
    feeds: list[list[dict[str, np.ndarray]]] = [[] for _ in sessions]
    logits: list[list[np.ndarray]] = [[] for _ in sessions]
    scores: list[list[np.ndarray]] = [[] for _ in sessions]
    n = len(inputs[0])
    for start in range(0, n, batch_size):
        values = [x[start : start + batch_size] for x in inputs]
        for i, (session, seg) in enumerate(zip(sessions, manifest.segments)):
            feed = dict(zip(seg.inputs, values))
            feeds[i].append(feed)
            wanted = [*seg.carry, seg.logits, seg.score]
            out = dict(zip(wanted, session.run(wanted, feed)))
            logits[i].append(out[seg.logits])
            scores[i].append(out[seg.score])
            values = [out[c] for c in seg.carry]
    return ChainOutputs(
        feeds=feeds,
        logits=[np.concatenate(per_exit) for per_exit in logits],
        scores=[np.concatenate(per_exit).reshape(-1) for per_exit in scores],
    )
