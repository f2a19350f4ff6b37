"""Bundles exported on the host run on the emulated Pi 4 and give the host's outputs.

Same model, same ONNX Runtime version, different kernels (NEON instead of AVX): results
agree to rounding, not bit for bit (fp32 measured 2.4e-6 apart at most in logits of up to
~10). int8 measured identical; its tolerance still allows a last-bit difference in the
fp32 ops around the quantized ones. Predictions must agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeexit import Runtime

BUNDLES = ("fp32", "int8-rpi4")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
# A sample whose score is this close to a threshold may exit elsewhere on another machine.
DECISION_MARGIN = 1e-4


class Loaded:
    def __init__(self, artifacts: Path, name: str) -> None:
        self.name = name
        self.runtime = Runtime(artifacts / name, target="rpi4")
        self.host = np.load(artifacts / f"host_{name}.npz")
        self.x = np.load(artifacts / "inputs.npz")["x"]


@pytest.fixture(scope="module", params=BUNDLES)
def loaded(request: pytest.FixtureRequest, host_artifacts: Path) -> Loaded:
    return Loaded(host_artifacts, request.param)


def test_bundle_is_what_the_host_exported(loaded: Loaded):
    expected = "int8" if loaded.name.startswith("int8") else "fp32"
    assert loaded.runtime.manifest.extra["precision"] == expected
    assert loaded.runtime.target.name == "rpi4"


def test_every_exit_matches_the_host(loaded: Loaded):
    every = loaded.runtime.run_all_exits(loaded.x)
    worst = float(np.max(np.abs(every.logits - loaded.host["all_logits"])))
    print(f"{loaded.name}: largest logit difference from the host {worst:.2e}")
    np.testing.assert_allclose(every.logits, loaded.host["all_logits"], **TOLERANCE)
    np.testing.assert_array_equal(every.logits.argmax(-1), loaded.host["all_logits"].argmax(-1))


def test_early_exits_match_the_host(loaded: Loaded):
    host = loaded.host
    result = loaded.runtime.run(loaded.x, thresholds=host["thresholds"].tolist())
    near = np.abs(host["all_scores"][:-1] - host["thresholds"][:-1, None])
    decisive = (near > DECISION_MARGIN).all(axis=0)
    assert decisive.mean() > 0.9, "too few samples far from every threshold to compare"
    assert len(np.unique(host["exit_index"])) > 1, "the host run used only one exit"
    np.testing.assert_array_equal(result.exit_index[decisive], host["exit_index"][decisive])
    same = result.exit_index == host["exit_index"]
    np.testing.assert_allclose(result.logits[same], host["logits"][same], **TOLERANCE)


def test_energy_on_a_pi4_is_modeled_never_measured(loaded: Loaded):
    result = loaded.runtime.run(loaded.x[:4])
    assert result.energy_source == "modeled"
    assert not result.energy_measured
    assert result.energy_mj is not None and result.energy_mj > 0
