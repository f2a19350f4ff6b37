"""Bundles exported on the host run on the emulated Pi 4 and give the host's outputs.

fp32: same ONNX Runtime version, different kernels (NEON instead of AVX): results agree to
rounding, not bit for bit (measured 2.4e-6 apart at most).

int8: the host's reference is the quantization simulated in fp32 (scripts/arm_host_side.py),
the numerics `edgeexit compile` uses to check int8 accuracy for another architecture, not
the host's own int8 kernels, which differ between x86 CPUs (AVX2 without VNNI saturates
its 16-bit sums; measured up to 1.36 logits apart from the Pi). Integer kernels that do
not saturate give the simulated figures exactly (an AVX-512 VNNI host: identical logits);
ONNX Runtime 1.17's ARM int8 kernels (the "oldest" set) differ a little: measured up to
1.4% of an exit's logit range, one prediction in 64 changed at two exits. Each exit is
held to a share of its logit range and of samples keeping their prediction, a little above
what was seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeexit import Runtime

BUNDLES = ("fp32", "int8-rpi4")


@dataclass(frozen=True)
class Agreement:
    """How closely the Pi must reproduce the host."""

    logits_of_range: float  # largest logit difference, as a fraction of the exit's range
    predictions: float  # least fraction of samples with the same prediction, per exit


SAME_NUMERICS = Agreement(logits_of_range=1e-5, predictions=1.0)
INT8_VS_SIMULATED = Agreement(logits_of_range=0.02, predictions=0.95)


class Loaded:
    """A bundle loaded on the Pi, its outputs here, and the host's outputs to compare with."""

    def __init__(self, artifacts: Path, name: str) -> None:
        self.name = name
        self.runtime = Runtime(artifacts / name, target="rpi4")
        self.host = np.load(artifacts / f"host_{name}.npz")
        self.x = np.load(artifacts / "inputs.npz")["x"]
        self.every = self.runtime.run_all_exits(self.x)
        simulated = str(self.host["kernels"]) == "simulated"
        self.agreement = INT8_VS_SIMULATED if simulated else SAME_NUMERICS
        # Per exit: the bound on a logit difference there.
        self.logit_atol = self.agreement.logits_of_range * np.ptp(
            self.host["all_logits"], axis=(1, 2)
        )


@pytest.fixture(scope="module", params=BUNDLES)
def loaded(request: pytest.FixtureRequest, host_artifacts: Path) -> Loaded:
    return Loaded(host_artifacts, request.param)


def assert_within(actual: np.ndarray, expected: np.ndarray, atol: np.ndarray) -> None:
    excess = np.abs(actual - expected) - atol
    assert (excess <= 0).all(), (
        f"{np.count_nonzero(excess > 0)} of {excess.size} logits differ from the host's "
        f"by more than allowed, the worst by {excess.max():.3g} more"
    )


def test_bundle_is_what_the_host_exported(loaded: Loaded):
    expected = "int8" if loaded.name.startswith("int8") else "fp32"
    assert loaded.runtime.manifest.extra["precision"] == expected
    assert loaded.runtime.target.name == "rpi4"


def test_every_exit_matches_the_host(loaded: Loaded):
    host_logits = loaded.host["all_logits"]
    assert_within(loaded.every.logits, host_logits, loaded.logit_atol[:, None, None])
    same = loaded.every.logits.argmax(-1) == host_logits.argmax(-1)
    assert (same.mean(axis=1) >= loaded.agreement.predictions).all(), same.mean(axis=1)


def test_early_exits_match_the_host(loaded: Loaded):
    host = loaded.host
    result = loaded.runtime.run(loaded.x, thresholds=host["thresholds"].tolist())
    # A sample may leave at another exit only if one of its scores moved across a threshold.
    thresholds = host["thresholds"][:-1, None]
    crossed = (
        (host["all_scores"][:-1] >= thresholds) != (loaded.every.scores[:-1] >= thresholds)
    ).any(axis=0)
    assert crossed.mean() < 0.1, "too many scores crossed a threshold to compare exits"
    assert len(np.unique(host["exit_index"])) > 1, "the host run used only one exit"
    np.testing.assert_array_equal(result.exit_index[~crossed], host["exit_index"][~crossed])
    same = result.exit_index == host["exit_index"]
    atol = loaded.logit_atol[result.exit_index[same]][:, None]
    assert_within(result.logits[same], host["logits"][same], atol)


def test_energy_on_a_pi4_is_modeled_never_measured(loaded: Loaded):
    result = loaded.runtime.run(loaded.x[:4])
    assert result.energy_source == "modeled"
    assert not result.energy_measured
    assert result.energy_mj is not None and result.energy_mj > 0
