"""One error tree for the whole toolchain.

Every failure a user can cause is an `EdgeExitError`; the CLI catches it once and prints
its message as one line. Vendor errors (torch, onnx, onnxruntime) are translated at the
boundary and chained with ``raise ... from err`` so the cause stays visible to debuggers.

Messages speak the library's language: a parameter is named in backquotes as Python spells
it (```max_accuracy_drop``` is 2.0; expected a fraction), and the CLI shows its flag
instead (``--max-accuracy-drop``; the one table is ``edgeexit.cli.core.FLAGS``).
"""

from __future__ import annotations

import reprlib
from typing import Any, Protocol


class Report(Protocol):
    """What a validation leaves behind: every check, for a person and for a script."""

    def to_json(self) -> dict[str, Any]: ...


class EdgeExitError(Exception):
    """Base of every error edgeexit raises on purpose."""


class BundleError(EdgeExitError):
    """A bundle directory is missing, unreadable, tampered with, or of another format."""


class ModelContractError(EdgeExitError):
    """A model does not follow the multi-exit contract (docs/export.md)."""


class CheckpointError(EdgeExitError):
    """A model file is not a checkpoint edgeexit can load safely."""


class ExportError(EdgeExitError):
    """The ONNX export itself failed."""


class ValidationError(EdgeExitError):
    """A bundle does not match its reference: ``report`` holds every check (it renders
    itself with rich and serializes with ``to_json``), not only the failing ones."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


class ParityError(ValidationError):
    """The exported segments do not match PyTorch within tolerance (``report``: the
    per-segment ``ValidationReport`` of ``edgeexit.export.validate``)."""


class PrecisionLossError(ValidationError):
    """A compiled bundle's exits lose more accuracy against fp32 than allowed (``report``:
    the ``CompileReport`` of ``edgeexit.compile``)."""


class InputError(EdgeExitError, ValueError):
    """Inputs do not fit the bundle's declared inputs (name, rank, shape or dtype)."""


class DataError(EdgeExitError):
    """A data file (.npz/.npy) is malformed."""


class TargetError(EdgeExitError):
    """A device target profile is unknown or invalid."""


class EnergyMeterError(EdgeExitError):
    """An energy sensor exists but cannot be read (for example, permission denied)."""


class OutputError(EdgeExitError):
    """An output path cannot be written without losing something, or the write failed."""


class CalibrationError(EdgeExitError):
    """A calibration budget cannot be met, or is malformed."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: how an
    error from a library (ONNX Runtime, torch, numpy) is quoted inside one of ours."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_QUOTED = reprlib.Repr()
_QUOTED.maxstring, _QUOTED.maxother, _QUOTED.maxlist, _QUOTED.maxdict = 60, 60, 8, 4


def quoted(value: Any) -> str:
    """A value from an untrusted file as a message quotes it: its repr, cut short (a hostile
    manifest's megabyte string would otherwise be the message)."""
    return _QUOTED.repr(value)
