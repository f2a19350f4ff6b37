"""A split bundle's device side on the emulated Pi: its exits, the carry it would send (the
wire's bytes), and the answers once the server's part runs on them, all as the host's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeexit.offload.device import SplitRuntime
from edgeexit.offload.tail import InProcessLink, Tail


def test_the_pi_splits_as_the_host_does(host_artifacts: Path):
    host = np.load(host_artifacts / "host_split.npz")
    x = np.load(host_artifacts / "inputs.npz")["x"]
    bundle = host_artifacts / "split"
    tail = Tail(bundle, threads=1)
    link = InProcessLink(tail)
    result = SplitRuntime(bundle, server=None, link=link, target="rpi4", threads=1).run(x)
    assert not result.degraded.any(), result.reason
    body = link.last_request
    assert len(body) == len(host["request"])  # the same samples sent, the same encoding
    (ours,), (theirs,) = tail.decode(body), tail.decode(host["request"].tobytes())
    # int8 codes may differ by one where NEON and AVX round a value on either side of .5
    scale = np.abs(theirs).reshape(len(theirs), -1).max(axis=1) / 127
    assert (np.abs(ours - theirs).reshape(len(theirs), -1).max(axis=1) <= 1.01 * scale).all()
    np.testing.assert_array_equal(result.exit_index, host["exit_index"])
    np.testing.assert_allclose(result.logits, host["logits"], atol=1e-3)
    alone = SplitRuntime(bundle, server=None, target="rpi4", threads=1).run(x)
    # no server: the split exit answers, marked degraded
    assert (alone.degraded == alone.offloaded).all() and alone.offloaded.any()
