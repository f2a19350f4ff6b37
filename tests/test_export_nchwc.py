"""The identity Conv that keeps a residual segment's carry in ORT's blocked layout."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeexit.export.nchwc import anchor_blocked_inputs


def residual_graph(channels: int = 16, skip: bool = True) -> onnx.ModelProto:
    """x -> Conv(3x3) -> (+ x if skip) -> Relu: a segment whose skip reads its graph input."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4)]
    nodes += [helper.make_node("Add", ["c", "x"], ["s"])] if skip else []
    nodes += [helper.make_node("Relu", ["s" if skip else "c"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 8, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def optimized_ops(model: onnx.ModelProto, path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, {"x": x})[0]


def test_a_skip_from_the_input_is_anchored_and_computes_the_same():
    model = residual_graph()
    original = onnx.ModelProto.FromString(model.SerializeToString())
    assert anchor_blocked_inputs(model) == ["x"]
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node][:2] == ["Conv", "Conv"]
    x = np.random.default_rng(1).standard_normal((2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(model, x), run(original, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("build", [lambda: residual_graph(skip=False), lambda: flat_graph()])
def test_inputs_only_convs_read_or_not_feature_maps_are_left_alone(build):
    model = build()
    before = model.SerializeToString()
    assert anchor_blocked_inputs(model) == []
    assert model.SerializeToString() == before


def flat_graph() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ort_fuses_the_residual_add_once_anchored(tmp_path):
    plain = optimized_ops(residual_graph(), tmp_path / "plain.onnx")
    if "ReorderInput" not in plain:
        pytest.skip("ONNX Runtime's blocked (NCHWc) layout is not used on this CPU")
    assert "Add" in plain  # the loss this module exists to fix
    model = residual_graph()
    anchor_blocked_inputs(model)
    anchored = optimized_ops(model, tmp_path / "anchored.onnx")
    assert "Add" not in anchored and "Relu" not in anchored
