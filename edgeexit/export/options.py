"""The export options, as one frozen dataclass that crosses the API, the CLI and validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeexit.budget import drop_from_points
from edgeexit.bundle import OUTPUT_KINDS
from edgeexit.errors import ExportError

DEFAULT_OPSET = 17  # the widest ONNX Runtime support on edge devices
MAX_OPSET = 21  # the highest an exporter that needs more (dynamo: 18) may use by default
DEFAULT_ATOL = 1e-4


@dataclass(frozen=True)
class ExportOptions:
    """How to export a multi-exit model to a bundle.

    ``opset=None`` picks DEFAULT_OPSET, capped by the target's ``max_opset``.
    ``exporter``: "auto" tries TorchScript then dynamo; "torchscript" or "dynamo" forces one.
    ``validate`` runs the bundle under ONNX Runtime against PyTorch (tolerance ``atol``).
    ``bodies`` also writes each segment but the last without its exit head, which the
    runtime runs while that exit is disabled (docs/runtime.md).
    ``max_prefix``: with bodies, a prefix graph for each exit k in 1..max_prefix (every
    body before k and segment k as one graph, which starts a chain whose exits before k
    are disabled: one call instead of k + 1); 0 writes none. Each holds k blocks' graph
    (their weights are stored once), so a deep chain gets them for its first exits, the
    ones calibration most often disables.
    ``output``: what every exit gives: "logits" ``[batch, classes]``, or "tensor", any
    tensor with the batch first (an image, a vector, per-token logits), scored by a
    criterion that does not read classes (gate, q-exit, similarity); or "tokens", per-token
    logits ``[batch, tokens, classes]`` with a score per token ``[batch, tokens]``, every
    carry tensor having the token axis second: each token may leave at its own exit, and
    later segments run on the remaining tokens only (docs/runtime.md, per-token exits).
    """

    criterion: str = "confidence"
    criterion_params: Mapping[str, Any] = field(default_factory=dict)
    opset: int | None = None
    atol: float = DEFAULT_ATOL
    target: str | None = None
    input_names: tuple[str, ...] | None = None
    exporter: str = "auto"
    simplify: bool = True
    validate: bool = True
    bodies: bool = True
    max_prefix: int = 3
    output: str = "logits"
    # With a target: data to quantize with and check exits on, and the most an exit may lose.
    calib_data: str | None = None
    max_quant_drop: float = 0.01  # a fraction: 0.01 is 1 pp
    max_quant_drop_pp: float | None = None  # deprecated: max_quant_drop in points

    def __post_init__(self) -> None:
        whole = isinstance(self.max_prefix, int) and not isinstance(self.max_prefix, bool)
        if not whole or self.max_prefix < 0:
            raise ExportError(
                f"`max_prefix` is {self.max_prefix!r}; expected a whole number >= 0 (0: no "
                "prefix graphs)"
            )
        if self.output not in OUTPUT_KINDS:
            raise ExportError(
                f"`output` is {self.output!r}; expected one of {', '.join(OUTPUT_KINDS)}"
            )
        if self.max_quant_drop_pp is not None:
            drop = drop_from_points(self.max_quant_drop_pp, "ExportOptions")
            object.__setattr__(self, "max_quant_drop", drop)
            object.__setattr__(self, "max_quant_drop_pp", None)
