"""host_binders: binding host memory by address, natively or through the public API."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeexit.runtime.buffers import bound_runner, host_binders


def _doubling_session() -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class _PublicOnly:
    """An IOBinding as the public API shows it, without ORT's internals."""

    def __init__(self, io: ort.IOBinding) -> None:
        self.bind_input, self.bind_output = io.bind_input, io.bind_output


@pytest.mark.parametrize("native", [True, False], ids=["native", "public"])
def test_binders_write_into_the_bound_rows(native: bool) -> None:
    session = _doubling_session()
    io = session.io_binding()
    bind_input, bind_output = host_binders(io if native else _PublicOnly(io))
    source = np.arange(12, dtype=np.float32).reshape(4, 3)
    target = np.full((4, 3), -1.0, dtype=np.float32)
    row = 3 * 4  # bytes
    # rows 1..2 of the source into rows 2..3 of the target, by address
    bind_input("x", source.dtype, [2, 3], source.ctypes.data + row)
    bind_output("y", target.dtype, [2, 3], target.ctypes.data + 2 * row)
    bound_runner(session, io, ort.RunOptions())()
    np.testing.assert_array_equal(target[:2], -1.0)  # untouched
    np.testing.assert_array_equal(target[2:], 2 * source[1:3])
