"""Models saved as captured programs: any model that exports, with no importable factory.

``edgeexit.save`` stores a model as the state_dict plus a factory when one can be imported
in another process; otherwise (a ``MultiExit`` built from parts, a class defined in a
script, a constructor with arguments) it captures every segment and every exit with
``torch.export`` (batch dimension dynamic) and stores each program as data: its graph as
torch.export's JSON serialization, its weights and constants as tensors. Nothing in the
file is pickled code: the checkpoint loads with ``torch.load(weights_only=True)``, the
graph is rebuilt by torch's deserializer from the JSON, and a graph calling anything but
ATen/prims operators (which only compute on tensors) is refused before it can run.

What a program cannot do that a factory can: train again (it is fixed in eval mode) and
take other shapes than the example's, except the batch size.
"""

from __future__ import annotations

import io
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeexit.errors import CheckpointError, first_line
from edgeexit.export.model import MultiExit

# Operators a loaded graph may call: tensor computations only.
SAFE_NAMESPACES = frozenset({"aten", "prims"})
SAFE_FUNCTIONS = (operator.getitem,)


class Program(nn.Module):
    """A captured segment or exit, usable where the original module was.

    Fixed in the mode it was captured in (eval): ``train()`` leaves it as it is, since the
    captured graph has no training behaviour to switch to."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.program = graph_module

    def forward(self, *args: Any) -> Any:
        return self.program(*args)

    def train(self, mode: bool = True) -> Program:
        return self


def capture(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """Every segment and exit of ``model`` (in eval mode), as data a weights-only
    checkpoint can hold: [segment 0, exit 0, segment 1, exit 1, ...]."""
    from torch._export.serde import serialize as serde  # torch's own format for programs

    was_training = model.training
    model.eval()
    try:
        carry = _batch_of_two(tuple(inputs))
        parts = []
        for i, (segment, head) in enumerate(zip(model.segments, model.exits)):
            parts.append(_capture_one(segment, carry, f"segment {i}", serde))
            with torch.no_grad():
                out = segment(*carry)
            carry = out if isinstance(out, tuple) else (out,)
            parts.append(_capture_one(head, carry, f"exit {i}", serde))
        return parts
    finally:
        model.train(was_training)


def _batch_of_two(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The examples with at least two rows: torch.export specializes a batch of one."""
    if inputs[0].shape[0] >= 2:
        return inputs
    return tuple(torch.cat([x, x]) for x in inputs)


def _capture_one(module: nn.Module, args: tuple, what: str, serde: Any) -> dict[str, Any]:
    from torch.export import Dim, export

    batch = Dim("batch", min=1)
    shapes = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
    try:
        program = export(module, args, dynamic_shapes=shapes, strict=False)
        artifact = serde.serialize(program)
        state = _tensors(artifact.state_dict, what)
        constants = _tensors(artifact.constants, what)
    except CheckpointError:
        raise
    except Exception as err:  # (torch.export raises many kinds: user code, guards, ops)
        line = first_line(err)
        raise CheckpointError(
            f"cannot capture {what} with torch.export ({line}); save the model with "
            "factory='package.module:function' (an importable function that builds it)"
        ) from err
    graph = torch.frombuffer(bytearray(artifact.exported_program), dtype=torch.uint8)
    return {"graph": graph, "state_dict": state, "constants": constants}


def _tensors(blob: bytes, what: str) -> dict[str, torch.Tensor]:
    if not blob:
        return {}
    loaded = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise CheckpointError(f"{what} holds constants that are not tensors; pass factory=...")
    return dict(loaded)


def check_parts(parts: Any) -> str | None:
    """What is wrong with a checkpoint's ``programs`` field, or None."""
    if not isinstance(parts, list) or not parts or len(parts) % 2:
        return "'programs' must be a non-empty list of segment and exit programs, in pairs"
    for part in parts:
        if not isinstance(part, dict) or set(part) != {"graph", "state_dict", "constants"}:
            return "each program must hold 'graph', 'state_dict' and 'constants'"
        if not isinstance(part["graph"], torch.Tensor) or part["graph"].dtype != torch.uint8:
            return "a program's 'graph' must be a uint8 tensor"
        for key in ("state_dict", "constants"):
            table = part[key]
            if not isinstance(table, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in table.items()
            ):
                return f"a program's {key!r} must map names to tensors"
    return None


def rebuild(parts: list[dict[str, Any]], source: Path) -> nn.Module:
    """The MultiExit the programs make, refusing a graph that calls more than tensor ops."""
    from torch._export.serde import serialize as serde

    modules = []
    for k, part in enumerate(parts):
        what = f"{'segment' if k % 2 == 0 else 'exit'} {k // 2}"
        artifact = serde.SerializedArtifact(
            part["graph"].numpy().tobytes(), part["state_dict"], part["constants"], ()
        )
        try:
            program = serde.deserialize(artifact)
        except Exception as err:  # (the deserializer raises many kinds on bad JSON)
            # torch's verifier refuses non-tensor calls too; its message lists every allowed
            # operator: keep the part that names the refused one.
            reason = " ".join(str(err).split())[:200]
            raise CheckpointError(
                f"{source}: {what} is not a program edgeexit will run: {reason}"
            ) from err
        _refuse_unsafe_calls(program, source, what)
        modules.append(Program(program.module()))
    return MultiExit(segments=modules[0::2], exits=modules[1::2])


def _refuse_unsafe_calls(program: Any, source: Path, what: str) -> None:
    """Every call in the program (subgraphs included) must be an ATen/prims operator."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in [] if graph is None else graph.nodes:
            if node.op in ("placeholder", "get_attr", "output"):
                continue
            if not (node.op == "call_function" and _safe(node.target)):
                raise CheckpointError(
                    f"{source}: {what} calls {node.target!r}, not a tensor operator; "
                    "edgeexit refuses to run it (load the model from its own code instead)"
                )


def _safe(target: Any) -> bool:
    if target in SAFE_FUNCTIONS:
        return True
    return isinstance(target, torch._ops.OpOverload) and target.namespace in SAFE_NAMESPACES
