"""The plain network as one graph: every block without its head, then the last exit.

A chain whose every early exit is disabled still pays one ONNX Runtime call per segment
(~8-10 µs each at batch 1 on a laptop core, more right after a large segment has flushed
the caches): 9 % of a 0.3 ms ResNet. Joining the bodies and the last segment into one
graph removes those calls, so a bundle calibrated to "no exit pays" runs exactly what the
plain network would. The graphs are joined as written (no second trace, no new numerics):
each graph's own names are prefixed, and each body's carry outputs feed the next graph's
inputs of the same name. An identity Conv that export put at a carry input (so that ONNX
Runtime keeps the carry in its blocked layout, export/nchwc.py) has nothing to do inside
one graph and is left out. Export joins the exported graphs, compile the compiled ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from edgeexit.bundle import INPUT_SUM, SegmentSpec

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


class CannotJoin(ValueError):
    """The graphs cannot be joined into one (different IR versions or opsets)."""


def join_graphs(
    graphs: Sequence[onnx.ModelProto], outputs: Sequence[str] | None = None
) -> onnx.ModelProto:
    """One model running ``graphs`` in order, each graph's outputs feeding the inputs of
    the same name in the next (a body's ``carry_i_k`` is segment i+1's input).

    Inputs are the first graph's, outputs the last's, or only ``outputs`` of them (the
    nodes and weights nothing else needs are left out: the plain graph gives the last
    exit's logits, not its score). Raises CannotJoin when the graphs differ in IR version
    or in the opset of a domain (each exported on its own, they may).
    """
    joined: onnx.ModelProto | None = None
    for k, graph in enumerate(graphs):
        # Every name but the graph's own inputs and outputs gets a prefix of its own, so
        # that two graphs' internal names (``/layer/MatMul_output_0``) never collide.
        own = compose.add_prefix(
            graph, f"g{k}/", rename_inputs=False, rename_outputs=False, rename_functions=False
        )
        own.ClearField("metadata_props")  # per graph (onnxsim's counts): not the plain graph's
        # Intermediate shapes name their unknown sizes per graph ("unk__0" in each): kept,
        # two graphs' sizes of one name would read as equal. ONNX Runtime infers them again.
        del own.graph.value_info[:]
        if k > 0:
            _drop_identity_convs_at_inputs(own.graph)
        if joined is None:
            joined = own
            continue
        carry = [o.name for o in joined.graph.output]
        takes = {i.name for i in own.graph.input}
        missing = [name for name in takes if name not in carry]
        if missing:
            raise CannotJoin(f"graph {k} reads {missing[0]!r}, which graph {k - 1} does not give")
        try:
            joined = compose.merge_models(
                joined, own, io_map=[(name, name) for name in carry if name in takes],
                outputs=[o.name for o in own.graph.output],
            )  # fmt: skip
        except ValueError as err:
            raise CannotJoin(str(err).splitlines()[0]) from err
    if joined is None:
        raise CannotJoin("no graphs to join")
    _keep_functions_once(joined)
    if outputs is not None:
        _keep_outputs(joined.graph, outputs)
    return joined


def joined_outputs(spec: SegmentSpec, last: bool) -> list[str]:
    """What the joined graph ending with ``spec`` gives: the last exit's logits for the
    plain graph (everyone leaves there), the segment's carry, logits and score for a
    prefix (the chain goes on after it)."""
    return [spec.logits] if last else [*spec.carry, spec.logits, spec.score]


def with_input_sum(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` also giving ``INPUT_SUM``: every element of its float inputs summed in
    float32 (each input cast first), a scalar. Inside the graph the sum costs ONNX Runtime
    one small kernel per input; in numpy before the call it cost ~3 % of a 0.45 ms network,
    whose interpreter caches the call has just flushed. A model without float inputs (token
    ids) is returned as it is: nothing to refuse, as is one that gives the sum already."""
    floats = [i for i in model.graph.input if i.type.tensor_type.elem_type in _FLOATS]
    if not floats or any(o.name == INPUT_SUM for o in model.graph.output):
        return model
    nodes, sums = [], []
    for k, spec in enumerate(floats):
        x = spec.name
        if spec.type.tensor_type.elem_type != TensorProto.FLOAT:
            cast = f"{INPUT_SUM}/cast_{k}"
            nodes.append(helper.make_node("Cast", [x], [cast], to=TensorProto.FLOAT, name=cast))
            x = cast
        sums.append(INPUT_SUM if len(floats) == 1 else f"{INPUT_SUM}/sum_{k}")
        nodes.append(helper.make_node("ReduceSum", [x], [sums[-1]], keepdims=0,
                                      name=f"{INPUT_SUM}/ReduceSum_{k}"))  # fmt: skip
    total = sums[0]
    for k, other in enumerate(sums[1:], 1):
        out = INPUT_SUM if k == len(sums) - 1 else f"{INPUT_SUM}/total_{k}"
        nodes.append(helper.make_node("Add", [total, other], [out], name=f"{INPUT_SUM}/Add_{k}"))
        total = out
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info(INPUT_SUM, TensorProto.FLOAT, []))
    return model


def without_input_sum(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without what ``with_input_sum`` added: compile converts a graph without
    it (int8 quantization would route the sum through the input's QuantizeLinear, which
    saturates NaN), then adds it again."""
    graph = model.graph
    if not any(o.name == INPUT_SUM for o in graph.output):
        return model
    kept_outputs = [o for o in graph.output if o.name != INPUT_SUM]
    kept_nodes = [n for n in graph.node if not n.name.startswith(f"{INPUT_SUM}/")]
    del graph.output[:], graph.node[:]
    graph.output.extend(kept_outputs)
    graph.node.extend(kept_nodes)
    return model


def _drop_identity_convs_at_inputs(graph: Any) -> None:
    """Remove each Conv reading a graph input that is an exact identity (depthwise 1x1,
    weight 1, no bias, default strides, pads and dilations), its readers reading the input."""
    inputs = {i.name for i in graph.input}
    weights = {t.name: t for t in graph.initializer}
    dropped: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type != "Conv" or len(node.input) != 2 or node.input[0] not in inputs:
            continue
        weight = weights.get(node.input[1])
        if weight is None or not _is_identity_conv(node, numpy_helper.to_array(weight)):
            continue
        dropped[node.output[0]] = node.input[0]
        graph.node.remove(node)
    if not dropped:
        return
    for node in graph.node:
        node.input[:] = [dropped.get(i, i) for i in node.input]
    read = {i for node in graph.node for i in node.input}
    unused = [t for t in graph.initializer if t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _is_identity_conv(node: Any, weight: np.ndarray) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    channels = weight.shape[0] if weight.ndim == 4 else -1
    return (
        weight.shape == (channels, 1, 1, 1)
        and bool(np.all(weight == 1))
        and attrs.get("group") == channels
        and all(v == 1 for v in attrs.get("strides", [1]))
        and all(v == 1 for v in attrs.get("dilations", [1]))
        and all(v == 0 for v in attrs.get("pads", [0]))
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def _keep_outputs(graph: Any, names: Sequence[str]) -> None:
    """Leave only the outputs ``names``, and the nodes and initializers they need."""
    given = {o.name: o for o in graph.output}
    unknown = [n for n in names if n not in given]
    if unknown:
        raise CannotJoin(f"the graphs give no output {unknown[0]!r}")
    kept_outputs = [given[n] for n in names]
    needed, kept = set(names), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # a subgraph (If, Loop) reads outer names too
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    needed.update(_names_read(sub))
    kept.reverse()
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.output[:], graph.node[:], graph.initializer[:]
    graph.output.extend(kept_outputs)
    graph.node.extend(kept)
    graph.initializer.extend(initializers)


def _names_read(graph: Any) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                names.update(_names_read(sub))
    return names


def _keep_functions_once(model: Any) -> None:
    """Local functions two graphs both define (the same exporter's helpers) once."""
    seen, kept = set(), []
    for function in model.functions:
        key = (function.domain, function.name, getattr(function, "overload", ""))
        if key not in seen:
            seen.add(key)
            kept.append(function)
    if len(kept) != len(model.functions):
        del model.functions[:]
        model.functions.extend(kept)
