"""The emulated machine is the one a Raspberry Pi 4 has, and ONNX Runtime runs on it."""

from __future__ import annotations

import platform
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort

AT_HWCAP = 16
# Linux arm64 HWCAP bits a Cortex-A72 lacks: a kernel built for it would crash on a real Pi.
HWCAP_ASIMDDP = 1 << 20
HWCAP_SVE = 1 << 22


def auxv_value(key: int) -> int:
    data = Path("/proc/self/auxv").read_bytes()
    pairs = struct.iter_unpack("<QQ", data)
    return next(value for k, value in pairs if k == key)


def test_machine_is_aarch64_python_311():
    assert platform.machine() == "aarch64"
    assert platform.python_version_tuple()[:2] == ("3", "11")


def test_cpu_is_a_cortex_a72_without_dot_product_or_sve():
    assert "CPU part\t: 0xd08" in Path("/proc/cpuinfo").read_text()
    hwcap = auxv_value(AT_HWCAP)
    assert not hwcap & HWCAP_ASIMDDP, "QEMU_CPU is not cortex-a72: dot-product offered"
    assert not hwcap & HWCAP_SVE, "QEMU_CPU is not cortex-a72: SVE offered"


def test_a_host_made_onnx_model_runs_and_matches_the_host(host_artifacts: Path):
    expected = np.load(host_artifacts / "tiny_expected.npz")
    session = ort.InferenceSession(
        str(host_artifacts / "tiny.onnx"), providers=["CPUExecutionProvider"]
    )
    (z,) = session.run(None, {"x": expected["x"]})
    np.testing.assert_allclose(z, expected["z"], rtol=1e-5, atol=1e-6)
