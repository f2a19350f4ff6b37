"""The server's part of a split bundle, without the server: what a request means and what
the answer is. ``edgeexit.serve`` wraps it in a Ray Serve deployment; nothing here knows
about HTTP or Ray, so the checks are the same wherever it runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeexit.bundle import read_manifest
from edgeexit.energy import NoMeter
from edgeexit.offload.wire import Expected, WireError, decode, encode
from edgeexit.runtime import Runtime
from edgeexit.runtime.inputs import all_finite
from edgeexit.split import Split, carry_bytes, read_split

MAX_ROWS = 4096  # samples one request may carry


class Tail:
    """A split bundle's tail loaded for a server: decode requests, run them (several
    devices' requests as one batch), encode the answers."""

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        *,
        threads: int | None = None,
        split: Split | None = None,
    ) -> None:
        self.split: Split = read_split(read_manifest(bundle_dir)) if split is None else split
        self.runtime = Runtime(bundle_dir, threads=threads, tail=self.split, meter=NoMeter())
        self.first_exit = self.split.at + 1
        specs = self.runtime.manifest.inputs
        # a float32 carry may come as the split's encoding or as computed (a device sends
        # float32 when float16 cannot hold its values); any other as it is
        self.expected = tuple(
            Expected(
                s.name,
                np.dtype(s.dtype),
                tuple(int(d) for d in s.shape[1:]),
                tuple(dict.fromkeys((self.split.encoding, "float32")))
                if s.dtype == "float32"
                else ("raw",),
            )
            for s in specs
        )
        # the longest request this split can send: the bound a server checks first
        self.max_body_bytes = MAX_ROWS * carry_bytes(self.split.carry, "float32") + (64 << 10)

    def info(self) -> dict[str, Any]:
        return {
            "split": self.split.split_id,
            "at": self.split.at,
            "encoding": self.split.encoding,
            "exits": list(range(self.first_exit, self.first_exit + self.runtime.num_exits)),
        }

    def decode(self, body: bytes) -> tuple[np.ndarray, ...]:
        """A request's carry (WireError: not one of this split's, or holding NaN or inf,
        refused here so that one bad request never fails the batch it would join)."""
        carry = decode(body, self.split.split_id, self.expected, max_rows=MAX_ROWS)
        for spec, x in zip(self.expected, carry):
            if x.dtype.kind == "f" and not all_finite(x):
                raise WireError(f"carry {spec.name!r} holds NaN or inf; expected finite numbers")
        return carry

    def run(self, requests: Sequence[tuple[np.ndarray, ...]]) -> list[bytes]:
        """Every request's answer, the requests run as one batch (each sample's answer is
        what it gets alone: the runtime's exits are per sample)."""
        sizes = [len(r[0]) for r in requests]
        joined = (
            requests[0]
            if len(requests) == 1
            else tuple(np.concatenate(parts) for parts in zip(*requests))
        )
        result = self.runtime.run(joined)
        logits = np.asarray(result.logits, dtype=np.float32)
        exits = np.asarray(result.exit_index, dtype=np.int64) + self.first_exit
        answers, start = [], 0
        for size in sizes:
            rows = slice(start, start + size)
            answers.append(
                encode(
                    self.split.split_id,
                    [("logits", logits[rows], "raw"), ("exit_index", exits[rows], "raw")],
                )
            )
            start += size
        return answers


class InProcessLink:
    """A device's link to a ``Tail`` in the same process: the carry encoded, decoded and
    run exactly as it would cross, without the network (``split_bundle`` checks a split
    through it). ``last_request``: the bytes it was last sent."""

    def __init__(self, tail: Tail) -> None:
        self.tail = tail
        self.last_request: bytes | None = None

    def post(self, body: bytes) -> tuple[bytes, int]:
        self.last_request = body
        (answer,) = self.tail.run([self.tail.decode(body)])
        return answer, 1
