"""A captured program as plain data: edgeexit's own graph format, which names no code.

A program (one segment or exit, captured with ``torch.export`` and decomposed to torch's
core ATen operators) is stored as a JSON document that lists its operator calls by name,
with literal arguments of a few plain kinds:

    {"format": "edgeexit.program/1", "inputs": 1, "weights": ["fc.weight", "fc.bias"],
     "nodes": [{"op": "aten.permute.default", "args": [{"value": 1}, [1, 0]], "kwargs": {}},
               {"op": "aten.addmm.default",
                "args": [{"value": 2}, {"value": 0}, {"value": 3}], "kwargs": {}}],
     "outputs": [{"value": 4}], "tuple": false}

Values are numbered: the inputs, then the weights, then each node's result; a node refers
only to values before it. An argument is null, a bool, an int (int64), a float (a number, or
{"float": "inf" | "-inf" | "nan"}), a short string, a list of arguments, a value
({"value": i}), or one of a fixed set of dtypes, layouts, memory formats and devices
(every device is read as the CPU, where checkpoints load).

Why not torch.export's own serialization, which edgeexit stored before: its deserializer
evaluates text. Every symbolic size is a sympy expression string that it hands to
``sympy.sympify``, which runs Python (``__import__('os').system(...)`` as a size runs at
load); ``ExportedProgram.module()`` ``exec``s the program's ``guards_code`` strings; and
fx writes the graph as Python source in which a get_attr target or a keyword name is
pasted unescaped. A strict grammar for those strings would have to follow every field of
every torch version's format (the expressions are ``srepr`` text with keyword arguments,
not just ``s0 * 2``). This format has no field that torch parses as text: its reader
checks every field's type and range, resolves operators from the allowlist below only,
and builds the fx graph itself, with names it makes (``x0``, ``w0``, ...), so the Python
source fx generates holds no text from the file but ``repr``'d literals.

The operators a program may call (``operator_named``): torch's core ATen set
(``torch.Tag.core``), functional (no schema that mutates), less the few that read or
write memory or process state rather than compute (``REFUSED``), plus the run-time checks
torch.export inserts (``CHECKS``, which only raise); and, on sizes, the
builtins torch.export's verifier allows (``Verifier.allowed_builtin_ops``) plus its
``torch.sym_*`` functions, run so that an operand outside int64 or an exponent over 64 is
an error instead of an unbounded Python integer.
"""

from __future__ import annotations

import json
import keyword
import math
import operator
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import torch
from torch import fx, nn

FORMAT = "edgeexit.program/1"
INT64 = (-(2**63), 2**63 - 1)
MAX_SHIFT = 64  # largest exponent, shift or rounding digit count size arithmetic may use
MAX_STRING = 1024  # the longest string argument (rounding_mode="floor", an assertion's message)
MAX_DEPTH = 4  # nesting of lists in an argument
MAX_INPUTS = 1024
# core ATen operators that do not just compute on tensors: uninitialized memory (whatever
# the process held before), a view at any offset of a storage, a tensor's value turned into
# a Python number (sizes that depend on data), and the process-wide random generator
REFUSED = {
    "aten.empty.memory_format": "returns uninitialized memory",
    "aten.empty_strided.default": "returns uninitialized memory",
    "aten.as_strided.default": "views a storage at any offset",
    "aten._local_scalar_dense.default": "turns tensor data into a Python number",
    "aten.rand.default": "draws from the process's random generator",
    "aten.randn.default": "draws from the process's random generator",
    "aten.randperm.default": "draws from the process's random generator",
    "aten.native_dropout.default": "draws from the process's random generator",
}
# the run-time checks torch.export writes into graphs (a `.to()`'s dtype, a size's range):
# they compute nothing and only raise
CHECKS = frozenset({
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
    "aten.sym_constrain_range.default", "aten.sym_constrain_range_for_size.default",
})  # fmt: skip
_ATEN_NAME = re.compile(r"aten\.(_?[a-z][a-z0-9_]*)\.([A-Za-z][A-Za-z0-9_]*)")
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,3})?")
DTYPES = {str(t).removeprefix("torch."): t for t in (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.complex128,
)}  # fmt: skip
LAYOUTS = {"strided": torch.strided}
MEMORY_FORMATS = {str(f).removeprefix("torch."): f for f in (
    torch.contiguous_format, torch.channels_last, torch.channels_last_3d,
    torch.preserve_format,
)}  # fmt: skip
_KINDS = {"dtype": DTYPES, "layout": LAYOUTS, "memory_format": MEMORY_FORMATS}
# torch.export's verifier allows these torch functions on sizes, next to its builtins
# (its list is local to Verifier._check_graph_module; these are its pure size functions)
SYM_FUNCTIONS = (
    torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min,
    torch.sym_not, torch.sym_sqrt, torch.sym_sum,
)  # fmt: skip
_EXPONENTS = (operator.pow, operator.lshift, operator.rshift, round)
# what size arithmetic computes on: numbers, and torch's symbolic ones while tracing
_NUMBERS = (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)


class ProgramError(ValueError):
    """A program document is malformed or calls what edgeexit will not run (one line)."""


# -- operators -----------------------------------------------------------------------------


def operator_name(target: Any) -> str:
    """The name a graph's call target is stored under; ProgramError if it may not run."""
    if isinstance(target, torch._ops.OpOverload):
        name = f"{target.namespace}.{target._opname}.{target._overloadname}"
    else:
        name = _size_name(target) if target in _size_functions().values() else repr(target)
    operator_named(name)  # the same check as at load: save refuses what load would refuse
    return name


def operator_named(name: str) -> Callable[..., Any]:
    """The callable ``name`` stands for, if a program may call it; else ProgramError."""
    sized = _size_functions().get(name)
    if sized is not None:
        return _bounded(sized)
    match = _ATEN_NAME.fullmatch(name)
    if match is None:
        raise ProgramError(f"calls {name[:80]!r}, which is not a core ATen operator")
    try:  # a lookup in torch's operator registry (C++), which imports nothing
        op = getattr(getattr(torch.ops.aten, match[1]), match[2])
    except AttributeError:
        raise ProgramError(f"calls {name!r}, which is not an operator of this torch") from None
    if not isinstance(op, torch._ops.OpOverload):
        raise ProgramError(f"calls {name!r}, which is not a core ATen operator")
    if torch.Tag.core not in op.tags and name not in CHECKS:
        raise ProgramError(f"calls {name!r}, which is not a core ATen operator")
    if op._schema.is_mutable:
        raise ProgramError(f"calls {name!r}, which changes its arguments in place")
    if name in REFUSED:
        raise ProgramError(f"calls {name!r}, which {REFUSED[name]}")
    return op


def _size_name(fn: Callable[..., Any]) -> str:
    module = {"_operator": "operator"}.get(fn.__module__, fn.__module__)
    return f"{module}.{fn.__name__}"


@cache
def _size_functions() -> dict[str, Callable[..., Any]]:
    from torch._export.verifier import Verifier

    fns = [*Verifier().allowed_builtin_ops(), *SYM_FUNCTIONS]
    return {_size_name(fn): fn for fn in fns}


@cache
def _bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` on numbers only, refusing int operands outside int64 and exponents (shifts,
    rounding digits) over ``MAX_SHIFT``: Python's ints and sequences grow without bound, so
    ``pow``, ``<<``, a chain of ``mul`` or ``"a" * 2**31`` would otherwise take all memory.
    ``getitem`` takes one element of an operator's tuple of results; ``sym_sum`` a list."""

    def sized(*args: Any) -> Any:
        if fn is operator.getitem:
            if len(args) != 2 or not isinstance(args[0], tuple | list):
                raise TypeError("getitem takes an element of an operator's results")
            numbers = args[1:]
        elif fn is torch.sym_sum and len(args) == 1 and isinstance(args[0], list | tuple):
            numbers = args[0]
        else:
            numbers = args
        for a in numbers:
            if not isinstance(a, _NUMBERS):
                raise TypeError(f"size arithmetic {_size_name(fn)} on a {type(a).__name__}")
            if type(a) is int and not INT64[0] <= a <= INT64[1]:
                raise OverflowError(f"size arithmetic {_size_name(fn)} on {a}, beyond int64")
        exponent = args[1] if fn in _EXPONENTS and len(args) == 2 else 0
        if type(exponent) is int and abs(exponent) > MAX_SHIFT:
            raise OverflowError(f"size arithmetic {_size_name(fn)} by {exponent}")
        return fn(*args)

    # fx writes ``operator`` builtins as Python operators (a * b), which would skip the
    # checks: a name of our own makes it call this function
    sized.__name__ = sized.__qualname__ = f"sized_{fn.__name__}"
    return sized


# -- writing -------------------------------------------------------------------------------


def encode(program: Any) -> tuple[bytes, dict[str, torch.Tensor]]:
    """An ExportedProgram (core ATen) as this format's JSON bytes, and its tensors by name.

    ProgramError names what cannot be stored: a call outside the allowlist, a mutated
    buffer, an output that is not a tensor or a tuple of tensors, an argument of another
    kind (a custom object, a subgraph)."""
    from torch.export.graph_signature import InputKind, OutputKind

    signature = program.graph_signature
    tables = {**program.state_dict, **program.constants}
    inputs, weights, tensors = [], [], {}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, signature.input_specs, strict=True):
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(node)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = tables.get(spec.target)
            if not isinstance(tensor, torch.Tensor):
                raise ProgramError(f"holds {spec.target!r}, which is not a tensor")
            weights.append(node)
            tensors[spec.target] = tensor.detach()
        else:
            raise ProgramError(f"takes a {spec.kind.name.lower()} input")
    if any(spec.kind != OutputKind.USER_OUTPUT for spec in signature.output_specs):
        raise ProgramError("changes a buffer or an input as it runs")
    values = {node: i for i, node in enumerate([*inputs, *weights])}
    nodes, outputs = [], []
    for node in program.graph.nodes:
        if node.op == "call_function":
            nodes.append({
                "op": operator_name(node.target),
                "args": [_encode_arg(a, values) for a in node.args],
                "kwargs": {k: _encode_arg(v, values) for k, v in node.kwargs.items()},
            })  # fmt: skip
            values[node] = len(values)
        elif node.op == "output":
            outputs = [_encode_arg(a, values) for a in node.args[0]]
        elif node.op != "placeholder":
            raise ProgramError(f"holds a {node.op} node ({node.target}), not an operator call")
    doc = {"format": FORMAT, "inputs": len(inputs), "weights": list(tensors), "nodes": nodes,
           "outputs": outputs, "tuple": _returns_tuple(program.call_spec.out_spec)}  # fmt: skip
    return json.dumps(doc, allow_nan=False).encode(), tensors


def _returns_tuple(spec: Any) -> bool:
    if spec.is_leaf():
        return False
    if spec.type is tuple and all(child.is_leaf() for child in spec.children()):
        return True
    raise ProgramError(f"returns a {spec.type.__name__}, not a tensor or a tuple of tensors")


def _encode_arg(arg: Any, values: Mapping[fx.Node, int]) -> Any:
    if isinstance(arg, fx.Node):
        return {"value": values[arg]}
    if arg is None or isinstance(arg, bool | int | str):
        return arg
    if isinstance(arg, float):
        return arg if math.isfinite(arg) else {"float": repr(arg)}
    if isinstance(arg, list | tuple):
        return [_encode_arg(a, values) for a in arg]
    if isinstance(arg, torch.device):
        return {"device": str(arg)}
    for kind, table in _KINDS.items():
        for name, known in table.items():
            if arg == known and type(arg) is type(known):
                return {kind: name}
    raise ProgramError(f"has an argument of type {type(arg).__name__} ({str(arg)[:60]})")


# -- reading -------------------------------------------------------------------------------


def decode(data: bytes, tensors: Mapping[str, torch.Tensor]) -> fx.GraphModule:
    """The GraphModule that ``data`` (this format's JSON) describes, its weights taken from
    ``tensors``; ProgramError for anything else."""
    doc = _parse(data)
    if len(set(doc["weights"])) != len(doc["weights"]) or set(doc["weights"]) != set(tensors):
        raise ProgramError("'weights' must name each of the program's tensors once")
    graph = fx.Graph()
    values: list[fx.Node] = [graph.placeholder(f"x{i}") for i in range(doc["inputs"])]
    root = nn.Module()
    for i, name in enumerate(doc["weights"]):
        root.register_buffer(f"w{i}", tensors[name])
        values.append(graph.get_attr(f"w{i}"))
    for k, node in enumerate(doc["nodes"]):
        try:
            target = operator_named(_op_name(node))
            args, kwargs = _node_arguments(node, target, values)
        except ProgramError as err:
            raise ProgramError(f"node {k} {err}") from None
        values.append(graph.call_function(target, tuple(args), kwargs))
    outputs = [_decode_arg(v, values, 0) for v in doc["outputs"]]
    if not all(isinstance(v, fx.Node) for v in outputs):
        raise ProgramError("'outputs' must be values, such as {\"value\": 3}")
    graph.output(tuple(outputs) if doc["tuple"] else outputs[0])
    return fx.GraphModule(root, graph)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ProgramError(f"is not a JSON program ({str(err)[:80]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProgramError(f"is not an {FORMAT} document")
    expected = {"format", "inputs", "weights", "nodes", "outputs", "tuple"}
    if set(doc) != expected:
        raise ProgramError(f"must hold exactly the keys {sorted(expected)}")
    if type(doc["inputs"]) is not int or not 1 <= doc["inputs"] <= MAX_INPUTS:
        raise ProgramError(f"'inputs' must be an int from 1 to {MAX_INPUTS}")
    weights = doc["weights"]
    if not isinstance(weights, list) or not all(isinstance(w, str) for w in weights):
        raise ProgramError("'weights' must be a list of tensor names")
    if not isinstance(doc["nodes"], list) or not all(isinstance(n, dict) for n in doc["nodes"]):
        raise ProgramError("'nodes' must be a list of operator calls")
    if not isinstance(doc["outputs"], list) or not doc["outputs"]:
        raise ProgramError("'outputs' must be a non-empty list of values")
    if not isinstance(doc["tuple"], bool) or (not doc["tuple"] and len(doc["outputs"]) != 1):
        raise ProgramError("'tuple' must be true, or false with exactly one output")
    return doc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _node_arguments(
    node: dict[str, Any], target: Callable[..., Any], values: list[fx.Node]
) -> tuple[list[Any], dict[str, Any]]:
    if set(node) != {"op", "args", "kwargs"}:
        raise ProgramError("must hold exactly 'op', 'args' and 'kwargs'")
    args, kwargs = node["args"], node["kwargs"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProgramError("has 'args' that are not a list or 'kwargs' that are not a dict")
    if isinstance(target, torch._ops.OpOverload):
        known = [a.name for a in target._schema.arguments]
        most = len(known)
    else:
        known, most = [], 3  # size functions take up to three positional arguments
    # (a keyword is written into the Python source fx generates: only the schema's names)
    if len(args) > most or any(k not in known or keyword.iskeyword(k) for k in kwargs):
        raise ProgramError(f"passes arguments that {_op_label(target)} does not take")
    decoded = [_decode_arg(a, values, 0) for a in args]
    return decoded, {k: _decode_arg(v, values, 0) for k, v in kwargs.items()}


def _op_label(target: Callable[..., Any]) -> str:
    return str(target) if isinstance(target, torch._ops.OpOverload) else target.__name__


def _decode_arg(arg: Any, values: list[fx.Node], depth: int) -> Any:
    if arg is None or isinstance(arg, bool | float):
        return arg
    if isinstance(arg, int):
        if not INT64[0] <= arg <= INT64[1]:
            raise ProgramError(f"has the int {str(arg)[:30]}, beyond int64")
        return arg
    if isinstance(arg, str):
        if len(arg) > MAX_STRING:
            raise ProgramError(f"has a string argument over {MAX_STRING} characters")
        return arg
    if isinstance(arg, list):
        if depth >= MAX_DEPTH:
            raise ProgramError(f"nests lists more than {MAX_DEPTH} deep")
        return [_decode_arg(a, values, depth + 1) for a in arg]
    if isinstance(arg, dict) and len(arg) == 1:
        ((kind, name),) = arg.items()
        return _decode_tagged(kind, name, values)
    raise ProgramError(f"has an argument that is not one this format stores: {str(arg)[:60]}")


def _decode_tagged(kind: str, name: Any, values: list[fx.Node]) -> Any:
    if kind == "value":
        if type(name) is not int or not 0 <= name < len(values):
            raise ProgramError(f"refers to value {str(name)[:30]}, not one defined before it")
        return values[name]
    if kind == "float" and name in ("inf", "-inf", "nan"):
        return float(name)
    if kind == "device" and isinstance(name, str) and _DEVICE.fullmatch(name):
        return torch.device("cpu")  # checkpoints load on the CPU (torch.load map_location)
    table = _KINDS.get(kind)
    if table is not None and isinstance(name, str) and name in table:
        return table[name]
    raise ProgramError(f"has an argument {{{kind[:30]!r}: {str(name)[:30]!r}}} it cannot read")


def _op_name(node: dict[str, Any]) -> str:
    name = node.get("op")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ProgramError("has an 'op' that is not an operator name")
    return name
