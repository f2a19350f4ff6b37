"""Keep a segment's carry in ONNX Runtime's blocked (NCHWc) layout around residual skips.

On x86 ONNX Runtime reorders feature maps into a blocked layout and fuses a residual
``Add`` (+ ``Relu``) into the Conv that produces one operand, but only when every operand
of the ``Add`` is already blocked. A graph input is not: the reorder ORT inserts for a
Conv reading it is private to that Conv. So in a segment whose identity skip starts at its
carry input, the block's last Conv is reordered back to NCHW and followed by a separate
``Add`` and ``Relu``, while the monolithic graph fuses all three. Routing such an input
through a depthwise 1x1 Conv of weight 1 (an exact identity: ``x * 1.0``) makes it a
blocked tensor that every consumer shares, and the fusion comes back.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Consumers that ORT can take in the blocked layout only from a blocked operand.
_BLOCKED_ONLY = {"Add", "Sum", "Mul", "Relu", "Concat", "BatchNormalization"}


def anchor_blocked_inputs(model: onnx.ModelProto) -> list[str]:
    """Insert an identity depthwise Conv after each 4-D float graph input that feeds a
    Conv and also a blocked-only op; return the inputs rewritten."""
    graph = model.graph
    initialized = {t.name for t in graph.initializer}
    rewritten = []
    for value in graph.input:
        if value.name in initialized:
            continue
        channels = _static_channels(value)
        consumers = [n for n in graph.node if value.name in n.input]
        ops = {n.op_type for n in consumers}
        if channels is None or "Conv" not in ops or not ops & _BLOCKED_ONLY:
            continue
        _insert_identity_conv(graph, value.name, channels, consumers)
        rewritten.append(value.name)
    return rewritten


def _static_channels(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT or len(tensor.shape.dim) != 4:
        return None
    dim = tensor.shape.dim[1]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _insert_identity_conv(graph, name: str, channels: int, consumers) -> None:
    anchored, weight = f"{name}__nchwc", f"{name}__nchwc_w"
    for node in consumers:
        node.input[:] = [anchored if i == name else i for i in node.input]
    graph.initializer.append(
        numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), weight)
    )
    conv = helper.make_node(
        "Conv",
        [name, weight],
        [anchored],
        name=f"{name}/nchwc_anchor",
        group=channels,
        kernel_shape=[1, 1],
    )
    # topological order: the new node goes first
    graph.node.insert(0, conv)
