"""Model inputs on the export side: example tensors from arrays, input names, and the
``--input-shape`` specs of the CLI (``[NAME=]D1xD2x...[:DTYPE]``, per-sample dims)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeexit.errors import InputError

EXAMPLE_BATCH = 2
_SPEC = re.compile(
    r"^(?:(?P<name>[A-Za-z_][\w.]*)=)?"  # optional NAME=
    r"(?P<dims>\d+(?:[x,]\d+)*)?"  # 1x8x8 or 1,8,8
    r"(?::(?P<dtype>\w+))?$"  # optional :DTYPE
)
# Names the bundle's graphs give their own tensors (bundle_export, bundle.INPUT_SUM): a
# model input may not take one.
_GRAPH_NAMES = re.compile(r"^(carry_\d+_\d+|logits_\d+|score_\d+|edgeexit_\w*)$")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class InputShape:
    """One model input as the CLI describes it: per-sample dims (no batch axis) and dtype."""

    name: str | None
    dims: tuple[int, ...]
    dtype: str = "float32"


def parse_input_shape(spec: str) -> InputShape:
    """``"1x8x8"``, ``"x=1,8,8"`` or ``"input_ids=16:int64"`` -> InputShape."""
    match = _SPEC.match(spec.strip())
    if not match or match["dims"] is None:
        raise InputError(
            f"input shape {spec!r} is malformed; expected [NAME=]D1xD2x...[:DTYPE] with the "
            "per-sample dims, e.g. 1x8x8 or input_ids=16:int64"
        )
    dtype = match["dtype"] or "float32"
    try:
        np.dtype(dtype)
    except TypeError as err:
        raise InputError(f"input shape {spec!r} has unknown dtype {dtype!r}") from err
    dims = tuple(int(d) for d in re.split("[x,]", match["dims"]))
    if any(d <= 0 for d in dims):
        raise InputError(f"input shape {spec!r} has a zero dim; expected positive sizes")
    return InputShape(match["name"], dims, dtype)


def example_tensors(shapes: Sequence[InputShape], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs for ``shapes``: uniform [0, 1) floats; integers are 1 (a valid token
    id and an all-ones attention mask)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        dtype = torch.from_numpy(np.zeros(0, dtype=s.dtype)).dtype
        size = (EXAMPLE_BATCH, *s.dims)
        if dtype.is_floating_point:
            out.append(torch.rand(size, generator=gen).to(dtype))
        else:
            out.append(torch.ones(size, dtype=dtype))
    return tuple(out)


def to_tensors(example_inputs: object) -> tuple[torch.Tensor, ...]:
    """Example inputs (a Tensor, an array, or a tuple/list of them) as a tuple of Tensors."""
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not items:
        raise InputError("no example inputs; expected a Tensor or a tuple of Tensors")
    tensors = []
    for k, x in enumerate(items):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise InputError(
                f"example input {k} is a {type(x).__name__}; expected a Tensor [batch, ...]"
            )
        tensors.append(x.detach().cpu())
    batch = {x.shape[0] for x in tensors}
    if len(batch) != 1:
        raise InputError(f"example inputs have different batch sizes {sorted(batch)}")
    return tuple(tensors)


def resolve_input_names(
    inputs: Sequence[torch.Tensor], names: Sequence[str] | None, model: object = None
) -> tuple[str, ...]:
    """The model inputs' names: given ones; else those of ``model.segments[0].forward``'s
    parameters (``input_ids, attention_mask``), where ``forward_names`` finds them; else
    ``x`` / ``input_0, input_1, ...``."""
    if names is None:
        found = forward_names(model, len(inputs))
        if found is not None:
            return found
        return ("x",) if len(inputs) == 1 else tuple(f"input_{k}" for k in range(len(inputs)))
    if len(names) != len(inputs) or len(set(names)) != len(names):
        raise InputError(
            f"got input names {list(names)} for {len(inputs)} inputs; "
            "expected one distinct name per input"
        )
    return tuple(names)


def forward_names(model: object, count: int) -> tuple[str, ...] | None:
    """The names of the first ``count`` parameters of the first segment's ``forward``: what
    the model calls its inputs. None where they say nothing or cannot be read: a model
    without segments, ``forward(*args)``, a segment that is one of torch's own modules
    (``nn.Sequential``'s ``input``), or a name the bundle's graphs use themselves."""
    segments = getattr(model, "segments", None)
    if not isinstance(segments, nn.ModuleList) or not len(segments):
        return None
    first = segments[0]
    if type(first).forward.__module__.startswith("torch."):
        return None
    try:
        parameters = list(inspect.signature(first.forward).parameters.values())
    except (TypeError, ValueError):  # a forward inspect cannot read (a C function)
        return None
    names = []
    for p in parameters[:count]:
        if p.kind not in _POSITIONAL or _GRAPH_NAMES.match(p.name):
            return None
        names.append(p.name)
    return tuple(names) if len(names) == count else None
