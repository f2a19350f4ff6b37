"""``probe_link``: what offloading costs from this device, measured against the server.

The probe asks the server what it serves (a GET: the round trip with no work, and the
check that it serves this bundle's split), then sends real requests: one sample's carry,
and ``batch_rows`` samples' at once, each ``requests`` times, alternating. Calibrate adds
the one-sample offload to the cost of every exit the server holds (docs/serving.md).
"""

from __future__ import annotations

import os
from time import perf_counter

import numpy as np

from edgeexit.bundle import read_manifest
from edgeexit.errors import InputError
from edgeexit.measure.cost_profile import LatencyStats, LinkProfile
from edgeexit.offload.link import Link, LinkError
from edgeexit.offload.wire import encode
from edgeexit.split import carry_bytes, read_split, wire_encoding

BATCH_ROWS = 16


def probe_link(
    bundle_dir: str | os.PathLike, url: str, *, requests: int = 30, timeout_s: float = 10.0
) -> LinkProfile:
    """Measure the link to ``url`` for ``bundle_dir``'s split (LinkError: no usable server)."""
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise InputError(f"`requests` is {requests!r}; expected a count >= 1")
    split = read_split(read_manifest(bundle_dir))
    link = Link(url, timeout_s=timeout_s, attempts=1)
    info = link.info()
    if info.get("split") != split.split_id:
        raise LinkError(
            f"{url} serves split {str(info.get('split'))[:40]!r}, not this bundle's "
            f"{split.split_id!r}: give it the same split bundle"
        )
    rng = np.random.default_rng(0)

    def body(rows: int) -> bytes:
        tensors = []
        for c in split.carry:
            shape = (rows, *(int(d) for d in c.shape[1:]))
            x = rng.standard_normal(shape).astype(c.dtype) if c.dtype.startswith("float") else (
                np.ones(shape, dtype=c.dtype))  # fmt: skip
            tensors.append((c.name, x, wire_encoding(c.dtype, split.encoding)))
        return encode(split.split_id, tensors)

    one, batch = body(1), body(BATCH_ROWS)
    rtt, single, many = [], [], []
    for k in range(requests + 2):  # two untimed rounds first
        for sink, send in ((rtt, link.info), (single, lambda: link.post(one)),
                           (many, lambda: link.post(batch)))[:: 1 if k % 2 else -1]:  # fmt: skip
            t0 = perf_counter()
            send()
            if k >= 2:
                sink.append((perf_counter() - t0) * 1e3)
    rtt_s, one_s, many_s = (LatencyStats.of(np.array(x)) for x in (rtt, single, many))
    extra_ms = many_s.median - one_s.median
    extra_bytes = len(batch) - len(one)
    mbit_s = extra_bytes * 8 / (extra_ms * 1e3) if extra_ms > 0 else None
    return LinkProfile(
        url=url,
        at=split.at,
        encoding=split.encoding,
        carry_bytes=carry_bytes(split.carry, split.encoding),
        requests=requests,
        rtt_ms=rtt_s,
        offload_ms=one_s,
        batch_rows=BATCH_ROWS,
        batch_offload_ms=many_s,
        effective_mbit_s=mbit_s,
    )
