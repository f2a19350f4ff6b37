"""The torch modules that become ONNX graphs: one segment with its exit and score, or the
whole network at once (the monolithic baseline). Both take and return flat tensors only,
because that is what an ONNX graph's inputs and outputs are."""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.export.model import as_carry, check_contract, split_head
from edgeexit.export.scores import exit_score


class SegmentGraph(nn.Module):
    """``segments[i]`` + ``exits[i]`` + the exit score: returns ``(*carry, logits, score)``
    (``logits``: the exit's output, any tensor where ``output="tensor"``).

    The last segment passes no carry on: it returns ``(logits, score)``.
    """

    def __init__(
        self, model: nn.Module, index: int, criterion: str, output: str = "logits"
    ) -> None:
        super().__init__()
        self.segment = model.segments[index]
        self.head = model.exits[index]
        self.index = index
        self.criterion = criterion
        self.output = output
        self.last = index == len(model.segments) - 1

    def forward(self, *carry_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        carry = as_carry(self.segment(*carry_in), f"segments[{self.index}]")
        logits, gate = split_head(self.head(*carry), f"exits[{self.index}]", self.output)
        score = exit_score(self.criterion, logits, gate, carry_in[0], carry[0])
        return (logits, score) if self.last else (*carry, logits, score)


class WholeGraph(nn.Module):
    """The whole network as one graph: ``(logits_0..logits_n-1, score_0..score_n-1)``."""

    def __init__(self, model: nn.Module, criterion: str, output: str = "logits") -> None:
        super().__init__()
        self.parts = nn.ModuleList(
            SegmentGraph(model, i, criterion, output) for i in range(check_contract(model))
        )

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        carry, logits, scores = inputs, [], []
        for part in self.parts:
            *carry, exit_logits, score = part(*carry)
            logits.append(exit_logits)
            scores.append(score)
        return (*logits, *scores)


class BodyGraph(nn.Module):
    """``segments[i]`` alone, without its exit head: returns the carry. The runtime runs it
    while exit i is disabled, so that a head that cannot fire costs nothing."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.segment = model.segments[index]
        self.index = index

    def forward(self, *carry_in: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(as_carry(self.segment(*carry_in), f"segments[{self.index}]"))


class PlainGraph(nn.Module):
    """The plain network: every segment, then the last exit head alone (``logits``): what
    a chain with every early exit disabled is measured against."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.segments = model.segments
        self.head = model.exits[len(model.segments) - 1]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        carry = inputs
        for i, segment in enumerate(self.segments):
            carry = as_carry(segment(*carry), f"segments[{i}]")
        return split_head(self.head(*carry), "exits[-1]")[0]
