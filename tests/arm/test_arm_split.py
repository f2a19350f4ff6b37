"""A split bundle's device side on the emulated Pi: its exits, the carry it would send (the
wire's bytes), and the answers once the server's part runs on them, all as the host's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeexit.offload.device import SplitRuntime
from edgeexit.offload.tail import Tail


def test_the_pi_splits_as_the_host_does(host_artifacts: Path):
    host = np.load(host_artifacts / "host_split.npz")
    x = np.load(host_artifacts / "inputs.npz")["x"]
    device = SplitRuntime(host_artifacts / "split", server=None, target="rpi4", threads=1)
    logits, exits, alive, carry = device._local(x)
    body = device._request(carry)
    assert len(body) == len(host["request"])  # the same samples sent, the same encoding
    tail = Tail(host_artifacts / "split", threads=1)
    (ours,), (theirs,) = tail.decode(body), tail.decode(host["request"].tobytes())
    # int8 codes may differ by one where NEON and AVX round a value on either side of .5
    scale = np.abs(theirs).reshape(len(theirs), -1).max(axis=1) / 127
    assert (np.abs(ours - theirs).reshape(len(theirs), -1).max(axis=1) <= 1.01 * scale).all()
    (answer,) = tail.run([tail.decode(body)])
    logits[alive], exits[alive] = device._read_answer(answer, len(alive))
    np.testing.assert_array_equal(exits, host["exit_index"])
    np.testing.assert_allclose(logits, host["logits"], atol=1e-3)
    degraded = device.run(x)  # no server: the split exit answers, marked degraded
    assert (degraded.degraded == degraded.offloaded).all() and degraded.offloaded.any()
