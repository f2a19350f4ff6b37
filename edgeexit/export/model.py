"""The multi-exit model contract (docs/design.md, section 1), checked once, in one place.

A multi-exit model is any ``nn.Module`` with two equal-length ``nn.ModuleList``s,
``segments`` and ``exits``. ``segments[0](*inputs)`` returns a carry (a Tensor or a tuple of
Tensors), ``segments[i](*carry)`` continues it, and ``exits[i](*carry_i)`` returns logits
``[batch, classes]`` or ``(logits, gate)`` with ``gate`` ``[batch]``. Everything else in the
export side walks a model through :func:`run_exits` so the contract is enforced identically
for export, validation and training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgeexit.errors import ModelContractError

CONTRACT = (
    "expected an nn.Module with two equal-length nn.ModuleLists `segments` and `exits` "
    "(or edgeexit.MultiExit(segments=[...], exits=[...]))"
)


class MultiExit(nn.Module):
    """A multi-exit model built from parts: ``segments[i]`` followed by head ``exits[i]``.

    ``forward`` returns every exit's logits, which is what joint training needs (every
    exit's output, for exits that give an image or another tensor: ``output="tensor"``).
    """

    def __init__(
        self, segments: Sequence[nn.Module], exits: Sequence[nn.Module], output: str = "logits"
    ) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.exits = nn.ModuleList(exits)
        self.output = output
        check_contract(self)

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return [step.logits for step in run_exits(self, inputs, self.output)]


@dataclass
class ExitStep:
    """What one segment + exit computed: the carry it received and passed on, and its head."""

    carry_in: tuple[torch.Tensor, ...]
    carry_out: tuple[torch.Tensor, ...]
    logits: torch.Tensor  # the exit's output: class logits, or any tensor (output="tensor")
    gate: torch.Tensor | None


def check_contract(model: object) -> int:
    """Check the model's structure; return its number of exits or raise ModelContractError."""
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"model is a {type(model).__name__}; {CONTRACT}")
    for attr in ("segments", "exits"):
        value = getattr(model, attr, None)
        if value is None:
            raise ModelContractError(f"{type(model).__name__} has no `{attr}`; {CONTRACT}")
        if not isinstance(value, nn.ModuleList):
            raise ModelContractError(
                f"{type(model).__name__}.{attr} is a {type(value).__name__}; {CONTRACT}"
            )
    n_seg, n_exit = len(model.segments), len(model.exits)
    if n_seg != n_exit:
        raise ModelContractError(
            f"{type(model).__name__} has {n_seg} segments but {n_exit} exits; "
            "expected one exit head per segment"
        )
    if n_seg == 0:
        raise ModelContractError(f"{type(model).__name__} has no segments; {CONTRACT}")
    return n_seg


def as_carry(value: object, where: str) -> tuple[torch.Tensor, ...]:
    """A segment's output as a tuple of Tensors (a lone Tensor is a 1-tuple)."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return tuple(value)
    if isinstance(value, (tuple, list)) and any(v is None for v in value):
        k = next(k for k, v in enumerate(value) if v is None)
        raise ModelContractError(
            f"{where} returned a carry whose element {k} is None; every element must be a "
            "Tensor. A transformers mask helper returns None for a batch without padding: "
            "build the mask as a Tensor yourself (e.g. from attention_mask) and carry that"
        )
    raise ModelContractError(
        f"{where} returned a {type(value).__name__}; expected a Tensor or a tuple of Tensors"
    )


def _described(value: object) -> object:
    """What a head returned, for an error: a tensor's shape, else its type's name."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def split_head(
    value: object, where: str, output: str = "logits"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An exit head's output as ``(logits [batch, classes], gate [batch] or None)``; with
    ``output="tensor"``, ``(any tensor [batch, ...], gate or None)``."""
    gate = None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value, gate = value
    if output == "tokens":
        if not isinstance(value, torch.Tensor) or value.dim() != 3:
            raise ModelContractError(
                f"{where} returned {_described(value)}; expected per-token logits "
                "[batch, tokens, classes] or (logits, gate [batch, tokens])"
            )
        if gate is not None and (not isinstance(gate, torch.Tensor) or gate.dim() != 2):
            raise ModelContractError(
                f"{where} returned a gate of {_described(gate)}; expected [batch, tokens]"
            )
        return value, gate
    if output == "tensor":
        if not isinstance(value, torch.Tensor) or value.dim() < 1:
            raise ModelContractError(
                f"{where} returned {_described(value)}; expected a tensor with the batch "
                "first, or (output, gate [batch])"
            )
    elif not isinstance(value, torch.Tensor) or value.dim() != 2:
        hint = ""
        if isinstance(value, torch.Tensor) and value.dim() != 2:
            hint = "; an exit that gives an image or another tensor: export with output='tensor'"
        raise ModelContractError(
            f"{where} returned {_described(value)}; expected logits [batch, classes] or "
            f"(logits, gate){hint}"
        )
    if gate is not None and (not isinstance(gate, torch.Tensor) or gate.dim() != 1):
        raise ModelContractError(
            f"{where} returned a gate of {_described(gate)}; expected a gate [batch]"
        )
    return value, gate


def run_exits(
    model: nn.Module, inputs: Sequence[torch.Tensor], output: str = "logits"
) -> list[ExitStep]:
    """Run every segment and exit head on ``inputs``, checking each output against the
    contract (``output``: "logits", or "tensor" for exits that give any tensor)."""
    n = check_contract(model)
    carry = tuple(inputs)
    steps = []
    for i in range(n):
        out = as_carry(model.segments[i](*carry), f"segments[{i}]")
        logits, gate = split_head(model.exits[i](*out), f"exits[{i}]", output)
        steps.append(ExitStep(carry, out, logits, gate))
        carry = out
    return steps
