"""Host half of scripts/test-arm.sh: make what the emulated aarch64 tests load and compare.

Writes into OUT_DIR a tiny ONNX model with the host's ONNX Runtime output for it (proof that
an emulated session runs at all). The emulated tests in tests/arm read these files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def write_tiny_model(out_dir: Path) -> None:
    """A two-node model (MatMul, Relu) and the host's output for a fixed input."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime >= 1.17 (the declared minimum) reads
    onnx.checker.check_model(model)
    onnx.save(model, out_dir / "tiny.onnx")

    x = rng.standard_normal((3, 8)).astype(np.float32)
    session = ort.InferenceSession(out_dir / "tiny.onnx", providers=["CPUExecutionProvider"])
    (z,) = session.run(None, {"x": x})
    np.savez(out_dir / "tiny_expected.npz", x=x, z=z)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tiny_model(out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: arm_host_side.py OUT_DIR")
    main(Path(sys.argv[1]))
