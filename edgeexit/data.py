"""Data files: ``.npz`` with the inputs (``x``, or one array per model input) and optional
integer labels ``y``; or a single ``.npy`` array for a single-input model."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.bundle import InputSpec
from edgeexit.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Inputs in the manifest's order, and labels if the file had them."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.inputs[0])

    def take(self, index: np.ndarray | slice) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return Dataset(tuple(x[index] for x in self.inputs), labels)


def load_data(path: str | os.PathLike, input_specs: tuple[InputSpec, ...]) -> Dataset:
    """Load a data file and match its arrays to ``input_specs``, or raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not a .npy or .npz file: {err}") from err
    if isinstance(loaded, np.ndarray):
        arrays = {"x": loaded}
    else:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    names = [s.name for s in input_specs]
    if len(input_specs) == 1 and names[0] not in arrays and "x" in arrays:
        arrays[names[0]] = arrays.pop("x")
    missing = [n for n in names if n not in arrays]
    if missing:
        expected = "'x'" if len(names) == 1 else ", ".join(repr(n) for n in names)
        raise DataError(f"{path} has no array {missing[0]!r}; expected {expected} and optional 'y'")
    inputs = tuple(_cast(arrays[s.name], s, path) for s in input_specs)
    n = len(inputs[0])
    for s, x in zip(input_specs, inputs):
        if len(x) != n:
            raise DataError(f"{path}: input {s.name!r} has {len(x)} samples, expected {n}")
    labels = arrays.get("y")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(
                f"{path}: labels 'y' have shape {labels.shape}, expected ({n},) (one per sample)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels 'y' are {labels.dtype}, expected integers")
        labels = labels.astype(np.int64)
    return Dataset(inputs, labels)


def _cast(x: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    want = tuple(spec.shape)
    if x.ndim != len(want):
        raise DataError(
            f"{path}: input {spec.name!r} has shape {x.shape}, expected rank {len(want)} {want}"
        )
    for got, dim in zip(x.shape[1:], want[1:]):
        if isinstance(dim, int) and got != dim:
            raise DataError(f"{path}: input {spec.name!r} has shape {x.shape}, expected {want}")
    dtype = np.dtype(spec.dtype)
    if x.dtype == dtype:
        return np.ascontiguousarray(x)
    if np.can_cast(x.dtype, dtype, casting="same_kind"):
        return np.ascontiguousarray(x.astype(dtype))
    raise DataError(f"{path}: input {spec.name!r} is {x.dtype}, expected {dtype}")
