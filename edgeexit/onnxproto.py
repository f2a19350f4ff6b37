"""Just enough of the ONNX protobuf wire format to find the external-data files a model names.

The device path must not import ``onnx``, yet it has to know which files a segment would
make ONNX Runtime open: weights stored as external data are read from paths written inside
the model, and those files must be covered by the bundle's sha256 list like the segment
itself. This walks a ModelProto's bytes (every graph, subgraph, function, initializer and
tensor attribute) and returns the ``location`` of every tensor stored outside it, skipping
raw tensor bytes without copying them.
"""

from __future__ import annotations

from collections.abc import Iterator

# (message, field number) pairs that hold the messages below, from onnx.proto3.
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE, _ATTR_SPARSES = 22, 23
_SPARSE_TENSORS = (1, 2)  # SparseTensorProto.values, .indices
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtoError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field: an int for varints, a view for length-delimited
    fields; fixed-width fields are skipped."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ProtoError("a field runs past the end of its message")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
    if pos != end:
        raise ProtoError("a fixed-width field runs past the end of its message")


def external_data_files(model: bytes | memoryview) -> list[str]:
    """Every external-data ``location`` the serialized ModelProto ``model`` names, in order
    of first appearance. Raises ProtoError on bytes that are not a protobuf message."""
    found: dict[str, None] = {}
    for number, value in fields(memoryview(model)):
        if isinstance(value, int):
            continue
        if number == _MODEL_GRAPH:
            _graph(value, found)
        elif number == _MODEL_FUNCTIONS:
            _nodes(value, _FUNCTION_NODE, found)
        elif number == _MODEL_TRAINING:
            for inner, graph in fields(value):
                if inner in _TRAINING_GRAPHS and not isinstance(graph, int):
                    _graph(graph, found)
    return list(found)


def _graph(data: memoryview, found: dict[str, None]) -> None:
    for number, value in fields(data):
        if isinstance(value, int):
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor(value, found)
        elif number == _GRAPH_SPARSE:
            _sparse(value, found)
        elif number == _GRAPH_NODE:
            _node(value, found)


def _nodes(data: memoryview, node_field: int, found: dict[str, None]) -> None:
    for number, value in fields(data):
        if number == node_field and not isinstance(value, int):
            _node(value, found)


def _node(data: memoryview, found: dict[str, None]) -> None:
    for number, value in fields(data):
        if number == _NODE_ATTRIBUTE and not isinstance(value, int):
            _attribute(value, found)


def _attribute(data: memoryview, found: dict[str, None]) -> None:
    for number, value in fields(data):
        if isinstance(value, int):
            continue
        if number in (_ATTR_TENSOR, _ATTR_TENSORS):
            _tensor(value, found)
        elif number in (_ATTR_GRAPH, _ATTR_GRAPHS):
            _graph(value, found)
        elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
            _sparse(value, found)


def _sparse(data: memoryview, found: dict[str, None]) -> None:
    for number, value in fields(data):
        if number in _SPARSE_TENSORS and not isinstance(value, int):
            _tensor(value, found)


def _tensor(data: memoryview, found: dict[str, None]) -> None:
    external = False
    location = None
    for number, value in fields(data):
        if number == _TENSOR_LOCATION and value == _EXTERNAL:
            external = True
        elif number == _TENSOR_EXTERNAL and not isinstance(value, int):
            entry = dict(fields(value))
            key, text = entry.get(_ENTRY_KEY), entry.get(_ENTRY_VALUE)
            if isinstance(key, memoryview) and bytes(key) == b"location":
                if not isinstance(text, memoryview):
                    raise ProtoError("an external-data entry has no location value")
                location = bytes(text).decode("utf-8", "replace")
    if location is not None:
        found.setdefault(location, None)
    elif external:
        raise ProtoError("a tensor is stored externally but names no location")


_NODE_OP_TYPE, _NODE_DOMAIN = 4, 7


def _main_graph(model: bytes | memoryview, field: int) -> Iterator[memoryview]:
    """The messages in field ``field`` of a serialized ModelProto's main graph (its nodes,
    its outputs...), in order."""
    for number, value in fields(memoryview(model)):
        if number != _MODEL_GRAPH or isinstance(value, int):
            continue
        for inner, message in fields(value):
            if inner == field and not isinstance(message, int):
                yield message


def op_counts(model: bytes | memoryview) -> dict[str, int]:
    """How many nodes of each operator the main graph of a serialized ModelProto holds
    (``domain::Op`` outside the default domain), most frequent first."""
    counts: dict[str, int] = {}
    for node in _main_graph(model, _GRAPH_NODE):
        op = domain = ""
        for field, item in fields(node):
            if field == _NODE_OP_TYPE and not isinstance(item, int):
                op = bytes(item).decode("utf-8", "replace")
            elif field == _NODE_DOMAIN and not isinstance(item, int):
                domain = bytes(item).decode("utf-8", "replace")
        name = f"{domain}::{op}" if domain not in ("", "ai.onnx") else op
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


_GRAPH_OUTPUT, _VALUE_INFO_NAME = 12, 1


def output_names(model: bytes | memoryview) -> list[str]:
    """The names of the main graph's outputs of a serialized ModelProto, in order."""
    names: list[str] = []
    for info in _main_graph(model, _GRAPH_OUTPUT):
        for field, item in fields(info):
            if field == _VALUE_INFO_NAME and not isinstance(item, int):
                names.append(bytes(item).decode("utf-8", "replace"))
    return names
