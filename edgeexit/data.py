"""Data files: ``.npz`` with the inputs (``x``, or one array per model input) and optional
integer labels ``y`` (for a bundle whose exits give tensors: the target tensors, e.g. the
clean images); or a single ``.npy`` array for a single-input model."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.bundle import FIXED_SIZE_HINT, InputSpec
from edgeexit.errors import DataError, first_line
from edgeexit.files import os_reason


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

    def check_labels(self, num_classes: int, source: str = "data") -> None:
        """Refuse labels outside ``0..num_classes-1``, one per sample or, for per-token
        exits, one per token (read as numbers, so a fraction is refused too): they can
        never be right, so every accuracy (and every budget built on it) would be silently
        wrong."""
        labels = self.labels
        if labels is None or not labels.size:
            return
        bad = (labels < 0) | (labels >= num_classes)
        if labels.dtype.kind == "f":
            bad |= labels != np.floor(labels)
        if not bad.any():
            return
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        value = labels[first].item()
        where, what = f"row {first[0]}", "rows"
        if len(first) > 1:  # per token
            where, what = f"row {first[0]}, token {first[1]}", "labels"
        reason = "is a fraction" if 0 <= value < num_classes else "is outside the model's classes"
        raise DataError(
            f"{source}: label {value:g} ({where}, {int(bad.sum())} such {what}) {reason}; "
            f"expected 0..{num_classes - 1}"
        )


def load_data(
    path: str | os.PathLike,
    input_specs: tuple[InputSpec, ...],
    *,
    targets: tuple[int, ...] | None = None,
) -> Dataset:
    """Load a data file and match its arrays to ``input_specs``, or raise DataError.

    Refused with one line each: a missing or unreadable file, one that is not .npy/.npz,
    a corrupt archive, arrays of Python objects (loading them would unpickle code), inputs
    of the wrong rank, shape or dtype, NaN or inf in a float input (named by row), and
    labels that are not one integer per sample.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"data file {path} {what}; expected a .npz or .npy file")
    arrays = _read_arrays(path)
    names = [s.name for s in input_specs]
    if len(input_specs) == 1 and names[0] not in arrays and "x" in arrays:
        arrays[names[0]] = arrays.pop("x")
    missing = [n for n in names if n not in arrays]
    if missing:
        expected = "'x'" if len(names) == 1 else ", ".join(repr(n) for n in names)
        raise DataError(f"{path} has no array {missing[0]!r}; expected {expected} and optional 'y'")
    inputs = tuple(_cast(arrays[s.name], s, path) for s in input_specs)
    n = len(inputs[0])
    if n == 0:
        raise DataError(f"{path} holds no samples; expected at least one")
    for s, x in zip(input_specs, inputs):
        if len(x) != n:
            raise DataError(f"{path}: input {s.name!r} has {len(x)} samples, expected {n}")
    _refuse_nonfinite(path, input_specs, inputs)
    labels = arrays.get("y")
    if labels is not None and targets is not None:
        return Dataset(inputs, _targets(labels, n, targets, path))
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(
                f"{path}: labels 'y' have shape {labels.shape}, expected ({n},) (one per sample)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels 'y' are {labels.dtype}, expected integers")
        labels = labels.astype(np.int64)
    return Dataset(inputs, labels)


def _targets(y: np.ndarray, n: int, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """The target tensors 'y' of a bundle whose exits give tensors: one per sample, each
    of the outputs' shape, finite floats (float32)."""
    if y.shape != (n, *shape):
        raise DataError(
            f"{path}: targets 'y' have shape {y.shape}, expected {(n, *shape)}: one per "
            "sample, shaped like an exit's output"
        )
    if y.dtype.kind not in "fiu":
        raise DataError(f"{path}: targets 'y' are {y.dtype}, expected numbers")
    y = y.astype(np.float32)
    if not all_finite(y):
        rows = nonfinite_rows(y)
        raise DataError(f"{path}: targets 'y' hold NaN or inf in {rows_text(rows)}")
    return y


# A zip archive (.npz) starts with a member's header, or, holding nothing, with the end of
# its (empty) directory.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npy/.npz file, read in full here, so that a corrupt member or an
    object array fails now, with the file named, and not later in the middle of a run."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY" and not magic.startswith(_ZIP_MAGICS):
            raise DataError(f"{path} is not a .npy or .npz file; expected numpy's formats")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"x": loaded}
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        if not arrays:
            raise DataError(
                f"{path} holds no arrays; expected 'x' (or one array per model input) and "
                "optional 'y'"
            )
        return arrays
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise DataError(
                f"{path} holds arrays of Python objects, which edgeexit will not unpickle; "
                "expected numeric arrays"
            ) from err
        raise DataError(f"{path} is not a .npy or .npz file: {first_line(err)}") from err
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"{path} is a damaged .npz archive: {first_line(err)}") from err
    except OSError as err:
        raise DataError(f"{path} is unreadable: {os_reason(err)}") from err


def _refuse_nonfinite(path: Path, specs: tuple[InputSpec, ...], inputs: tuple) -> None:
    for spec, x in zip(specs, inputs):
        if x.dtype.kind != "f":
            continue
        rows = nonfinite_rows(x)
        if rows.size:
            raise DataError(
                f"{path}: input {spec.name!r} holds NaN or inf in {rows_text(rows)}; "
                "expected finite numbers"
            )


# Below this many elements a sum is the cheapest finiteness test (~3 µs against ~4 for
# np.isfinite(x).all() on a small input); above it isfinite is faster. A finite sum means
# every element is finite. A float32 array is summed in float32: half the time of a float64
# sum when the caches are cold (7 µs against 16 right after a segment; the runtime checks
# every call's inputs; np.errstate to silence a warning would cost 15 µs more). A sum that
# overflows (elements near 1e34 and up: numpy warns once) is settled element by element;
# float16 (max 65504) is summed in float32.
_SUM_TEST_MAX = 16384


def all_finite(x: np.ndarray) -> bool:
    """True when the float array ``x`` holds no NaN and no inf."""
    if x.size <= _SUM_TEST_MAX and x.itemsize < 8:
        try:
            total = np.add.reduce(x, axis=None, dtype=None if x.itemsize == 4 else np.float32)
        except (FloatingPointError, RuntimeWarning):  # overflow set to raise: look closer
            total = math.inf
        if math.isfinite(total):
            return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(x).all())


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the samples (rows) of ``x`` holding a NaN or an inf."""
    return np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))


def rows_text(rows: np.ndarray) -> str:
    """'2 sample(s) (rows 3, 17)', at most ten rows named."""
    shown = ", ".join(str(r) for r in rows[:10]) + (" ..." if rows.size > 10 else "")
    return f"{rows.size} sample(s) (rows {shown})"


def _cast(x: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    want = tuple(spec.shape)
    if x.ndim != len(want):
        raise DataError(
            f"{path}: input {spec.name!r} has shape {x.shape}, expected rank {len(want)} {want}"
        )
    for got, dim in zip(x.shape[1:], want[1:]):
        if isinstance(dim, int) and got != dim:
            raise DataError(
                f"{path}: input {spec.name!r} has shape {x.shape}, expected {want}{FIXED_SIZE_HINT}"
            )
    dtype = np.dtype(spec.dtype)
    if x.dtype == dtype:
        return np.ascontiguousarray(x)
    if np.can_cast(x.dtype, dtype, casting="same_kind"):
        with np.errstate(over="ignore"):  # overflow becomes inf, refused with its rows
            return np.ascontiguousarray(x.astype(dtype))
    raise DataError(f"{path}: input {spec.name!r} is {x.dtype}, expected {dtype}")
