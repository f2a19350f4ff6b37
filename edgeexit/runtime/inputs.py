"""Checking a call's inputs against the manifest before anything runs.

A mistake in the inputs (wrong rank, shape, dtype, name, or a batch that differs between
inputs) is reported as an InputError naming the input, what was expected and what came, so
no ONNX Runtime error from deep inside a segment ever reaches the user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeexit.bundle import FIXED_SIZE_HINT, InputSpec
from edgeexit.data import all_finite, nonfinite_rows, rows_text
from edgeexit.errors import InputError

Inputs = np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]


def _shape_text(spec: InputSpec) -> str:
    return "(" + ", ".join(str(d) for d in spec.shape) + ")"


def _as_tuple(inputs: Any, specs: tuple[InputSpec, ...]) -> tuple[Any, ...]:
    names = [s.name for s in specs]
    if isinstance(inputs, np.ndarray):
        if len(specs) != 1:
            raise InputError(f"got one array; the model takes {len(specs)} inputs: {names}")
        return (inputs,)
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; expected inputs {names}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"input {missing[0]!r} is missing; expected inputs {names}")
        return tuple(inputs[n] for n in names)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        if len(inputs) != len(specs):
            raise InputError(f"got {len(inputs)} inputs; expected {len(specs)}: {names}")
        return tuple(inputs)
    raise InputError(
        f"inputs are a {type(inputs).__name__}; expected a numpy array, a sequence of arrays "
        f"in the order {names}, or a dict from input name to array"
    )


def _check_one(x: Any, spec: InputSpec) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InputError(
            f"input {spec.name!r} is a {type(x).__name__}; expected a numpy array of "
            f"{spec.dtype} with shape {_shape_text(spec)}"
        )
    if x.dtype != np.dtype(spec.dtype):
        raise InputError(
            f"input {spec.name!r} has dtype {x.dtype}; expected {spec.dtype} "
            f"with shape {_shape_text(spec)}"
        )
    if x.ndim != len(spec.shape):
        raise InputError(
            f"input {spec.name!r} has shape {x.shape} (rank {x.ndim}); expected rank "
            f"{len(spec.shape)} {_shape_text(spec)}"
        )
    for got, want in zip(x.shape, spec.shape):
        if isinstance(want, int) and got != want:
            raise InputError(
                f"input {spec.name!r} has shape {x.shape}; expected {_shape_text(spec)}"
                f"{FIXED_SIZE_HINT}"
            )
    return x


def check_inputs(inputs: Any, specs: tuple[InputSpec, ...]) -> tuple[np.ndarray, ...]:
    """The inputs as arrays in the manifest's order, or an InputError.

    The batch axis is the one named ``"batch"`` in each spec (axis 0 in every exported
    bundle); all inputs must agree on it and it must be at least 1.
    """
    arrays = tuple(_check_one(x, s) for x, s in zip(_as_tuple(inputs, specs), specs))
    batch = arrays[0].shape[0]
    for x, spec in zip(arrays, specs):
        if x.shape[0] != batch:
            raise InputError(
                f"input {spec.name!r} has batch {x.shape[0]}; expected {batch} like "
                f"{specs[0].name!r}"
            )
    if batch < 1:
        raise InputError(f"input {specs[0].name!r} has an empty batch; expected >= 1 sample")
    if not all(all_finite(x) for x in arrays if x.dtype.kind == "f"):
        refuse_nonfinite(arrays, specs)
    return arrays


def refuse_nonfinite(arrays: Sequence[np.ndarray], specs: tuple[InputSpec, ...]) -> None:
    """Raise the InputError naming the first input with NaN or inf, and its rows."""
    for x, spec in zip(arrays, specs):
        if x.dtype.kind == "f":
            rows = nonfinite_rows(x)
            if rows.size:
                raise InputError(
                    f"input {spec.name!r} holds NaN or inf in {rows_text(rows)}; expected "
                    "finite numbers: a prediction for them means nothing"
                )
