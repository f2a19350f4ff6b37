"""Segment costs from a device profile: measured energy kept and labeled, else modeled."""

import json

import pytest

from edgeexit.bundle import InputSpec, Manifest, SegmentSpec
from edgeexit.calibrate import load_profile_costs
from edgeexit.errors import CalibrationError, EdgeExitError


def manifest(n=3):
    segments = tuple(
        SegmentSpec(f"segment_{i:02d}.onnx", f"{i:064d}", ("x",), (), f"l{i}", f"s{i}")
        for i in range(n)
    )
    return Manifest((InputSpec("x", "float32", ("batch", 4)),), segments, "confidence",
                    (float("inf"),) * n)  # fmt: skip


def profile_doc(energy_mj, *, measured, batch_size=1):
    return {
        "format": "edgeexit.profile/1",
        "target": "rpi5",
        "precision": "fp32",
        "energy_source": "rpi5-pmic" if measured else "none",
        "energy_measured": measured,
        "power_model_w": {"idle": 2.0, "active": 5.0},
        "batch_size": batch_size,
        "repeats": 10,
        "warmup": 1,
        "providers": ["CPUExecutionProvider"],
        "onnxruntime": "1.0",
        "platform": "test",
        "segments": [
            {
                "index": i,
                "file": f"segment_{i:02d}.onnx",
                "sha256": f"{i:064d}",
                "latency_ms": {"median": 1.0 + i, "p95": 2.0 + i, "mean": 1.5, "min": 0.5},
                "energy_mj": e,
                "power_w": None,
            }
            for i, e in enumerate(energy_mj)
        ],
    }


def write(tmp_path, doc):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return path


def test_measured_energy_is_per_sample_and_labeled(tmp_path):
    doc = profile_doc([4.0, 8.0, 2.0], measured=True, batch_size=2)
    costs = load_profile_costs(write(tmp_path, doc), manifest())
    assert costs.latency_ms == (1.0, 2.0, 3.0) and costs.p95_latency_ms == (2.0, 3.0, 4.0)
    assert costs.energy_mj == (2.0, 4.0, 1.0)
    assert costs.energy_source == "measured (rpi5-pmic)"
    assert list(costs.cumulative_latency_ms) == [1.0, 3.0, 6.0]


def test_unmeasured_energy_is_modeled_from_profile_power(tmp_path):
    costs = load_profile_costs(write(tmp_path, profile_doc([None] * 3, measured=False)),
                               manifest())  # fmt: skip
    assert costs.energy_source == "modeled"
    assert costs.energy_mj == pytest.approx((5.0, 10.0, 15.0))  # 5 W x ms


def test_profile_of_other_bundle_or_garbage_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="another bundle"):
        load_profile_costs(write(tmp_path, profile_doc([None] * 2, measured=False)), manifest())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgeExitError, match="not readable JSON"):
        load_profile_costs(tmp_path / "bad.json", manifest())
