"""Models saved as captured programs: any model that exports, with no importable factory.

``edgeexit.save`` stores a model as the state_dict plus a factory when one can be imported
in another process; otherwise (a ``MultiExit`` built from parts, a class defined in a
script, a constructor with arguments) it captures every segment and every exit with
``torch.export`` (batch dimension dynamic), decomposes it to torch's core ATen operators,
and stores each program as data: its graph in edgeexit's own format
(``edgeexit.export.program_graph``, which names no code and holds no text torch evaluates)
and its weights and constants as tensors. The checkpoint loads with
``torch.load(weights_only=True)``; the graph is rebuilt from an allowlist of operators
(pure tensor computations and size arithmetic), then run once on the checkpoint's own
example inputs, so that a crafted graph fails at load with one line, not later.

What a program cannot do that a factory can: train again (it is fixed in eval mode) and
take other shapes than the example's, except the batch size. Graphs with control flow
(``torch.cond``), custom operators or a mutated buffer cannot be stored this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeexit.errors import CheckpointError, first_line
from edgeexit.export.model import MultiExit
from edgeexit.export.program_graph import ProgramError, decode, encode

PART_KEYS = {"graph", "tensors"}
# what edgeexit stored before: torch.export's serialization, whose reader evaluates text
OLD_PART_KEYS = {"graph", "state_dict", "constants"}


class Program(nn.Module):
    """A captured segment or exit, usable where the original module was.

    Fixed in the mode it was captured in (eval): ``train()`` leaves it as it is, since the
    captured graph has no training behaviour to switch to. ONNX export takes the dynamo
    exporter: TorchScript's tracer would freeze the graph's size arithmetic (a view to
    ``[batch, -1]``) to the example's batch size, so it is refused here and the exporter
    falls back."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.program = graph_module

    def forward(self, *args: Any) -> Any:
        if torch.jit.is_tracing():
            raise CheckpointError(
                "a captured program exports with the dynamo exporter (opset 18 or later), "
                "not TorchScript, which would fix its batch size"
            )
        return self.program(*args)

    def train(self, mode: bool = True) -> Program:
        return self


def capture(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """Every segment and exit of ``model`` (in eval mode), as data a weights-only
    checkpoint can hold: [segment 0, exit 0, segment 1, exit 1, ...]."""
    was_training = model.training
    model.eval()
    try:
        carry = _batch_of_two(tuple(inputs))
        parts = []
        for i, (segment, head) in enumerate(zip(model.segments, model.exits)):
            parts.append(_capture_one(segment, carry, f"segment {i}"))
            with torch.no_grad():
                out = segment(*carry)
            carry = out if isinstance(out, tuple) else (out,)
            parts.append(_capture_one(head, carry, f"exit {i}"))
        return parts
    finally:
        model.train(was_training)


def _batch_of_two(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The examples with at least two rows: torch.export specializes a batch of one."""
    if inputs[0].shape[0] >= 2:
        return inputs
    return tuple(torch.cat([x, x]) for x in inputs)


def _capture_one(module: nn.Module, args: tuple, what: str) -> dict[str, Any]:
    from torch.export import Dim, export

    batch = Dim("batch", min=1)
    shapes = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
    try:
        program = export(module, args, dynamic_shapes=shapes, strict=False)
        with warnings.catch_warnings():  # torch 2.13 warns about its own use of LeafSpec
            warnings.filterwarnings("ignore", ".*LeafSpec", FutureWarning)
            program = program.run_decompositions()  # to core ATen operators
        graph, tensors = encode(program)
    except ProgramError as err:
        raise CheckpointError(
            f"cannot store {what} as a program: it {err}; save the model with "
            "factory='package.module:function' (an importable function that builds it)"
        ) from err
    except Exception as err:  # (torch.export raises many kinds: user code, guards, ops)
        raise CheckpointError(
            f"cannot capture {what} with torch.export ({first_line(err)}); save the model "
            "with factory='package.module:function' (an importable function that builds it)"
        ) from err
    data = torch.frombuffer(bytearray(graph), dtype=torch.uint8)
    return {"graph": data, "tensors": {k: v.clone() for k, v in tensors.items()}}


def check_parts(parts: Any) -> str | None:
    """What is wrong with a checkpoint's ``programs`` field, or None."""
    if not isinstance(parts, list) or not parts or len(parts) % 2:
        return "'programs' must be a non-empty list of segment and exit programs, in pairs"
    for part in parts:
        if isinstance(part, dict) and set(part) == OLD_PART_KEYS:
            return (
                "its programs are in torch.export's own format, which an earlier edgeexit "
                "wrote and which can run code as it loads; re-save the model with this "
                "edgeexit's edgeexit.save"
            )
        if not isinstance(part, dict) or set(part) != PART_KEYS:
            return "each program must hold exactly 'graph' and 'tensors'"
        graph = part["graph"]
        if not plain_tensor(graph) or graph.dtype != torch.uint8 or graph.dim() != 1:
            return "a program's 'graph' must be a 1-D uint8 tensor"
        table = part["tensors"]
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and plain_tensor(v) for k, v in table.items()
        ):
            return "a program's 'tensors' must map names to (dense, CPU) tensors"
    return None


def plain_tensor(value: Any) -> bool:
    """A dense CPU tensor with no more elements than its storage holds: a view with stride 0
    over one stored byte can claim 10**12 elements, which reading would allocate."""
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        return False
    size = value.numel() * value.element_size()
    return value.device.type == "cpu" and size <= value.untyped_storage().nbytes()


def rebuild(
    parts: list[dict[str, Any]], source: Path, example_inputs: Sequence[torch.Tensor]
) -> nn.Module:
    """The MultiExit the programs make, after a first run on ``example_inputs``: a graph
    that calls anything outside the allowlist, or does not run, is refused (one line)."""
    modules = []
    for k, part in enumerate(parts):
        try:
            graph_module = decode(part["graph"].detach().numpy().tobytes(), part["tensors"])
        except ProgramError as err:
            raise CheckpointError(
                f"{source}: {_part_name(k)} is not a program edgeexit will run: its graph {err}"
            ) from err
        modules.append(Program(graph_module))
    model = MultiExit(segments=modules[0::2], exits=modules[1::2])
    _first_run(model, tuple(example_inputs), source)
    return model


def _part_name(k: int) -> str:
    return f"{'segment' if k % 2 == 0 else 'exit'} {k // 2}"


def _first_run(model: MultiExit, inputs: tuple[torch.Tensor, ...], source: Path) -> None:
    """Run every part once, so a graph that does not fit its inputs fails here, named."""
    carry = inputs
    with torch.no_grad():
        for k, module in enumerate(m for pair in zip(model.segments, model.exits) for m in pair):
            try:
                out = module(*carry)
            except Exception as err:  # (an operator given the wrong arguments raises any kind)
                raise CheckpointError(
                    f"{source}: {_part_name(k)} does not run on the checkpoint's example "
                    f"inputs: {first_line(err)}"
                ) from err
            if k % 2 == 0:
                carry = out if isinstance(out, tuple) else (out,)
