"""Exits beyond classification on the emulated Pi 4: an image per exit, and per-token exits
with token-axis compaction, give the host's answers (same exits; outputs to rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeexit import Runtime


@pytest.mark.parametrize("name", ["denoise", "tokens"])
def test_the_pi_gives_the_hosts_answers(host_artifacts: Path, name: str):
    host = np.load(host_artifacts / f"host_{name}.npz")
    inputs = [host[f"arr_{k}"] for k in range(len([f for f in host.files if f.startswith("arr_")]))]
    runtime = Runtime(host_artifacts / name, target="rpi4")
    result = runtime.run(inputs, thresholds=host["thresholds"].tolist())
    np.testing.assert_array_equal(result.exit_index, host["exit_index"])
    np.testing.assert_allclose(result.logits, host["outputs"], atol=1e-4)
