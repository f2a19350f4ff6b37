"""The torch side of edgeexit: the model contract, checkpoints, ONNX export and validation.

``edgeexit.export`` is both this package and a function:
``edgeexit.export(model, example_inputs, out_dir, ...)`` calls :func:`export`. Importing it
imports torch and onnx, which is why ``import edgeexit`` loads it only on first use.
"""

from __future__ import annotations

import sys
import types

from edgeexit.export.bundle_export import ExportResult, export, export_bundle, export_monolithic
from edgeexit.export.model import MultiExit, check_contract, run_exits
from edgeexit.export.options import ExportOptions

__all__ = [
    "ExportOptions",
    "ExportResult",
    "MultiExit",
    "check_contract",
    "export",
    "export_bundle",
    "export_monolithic",
    "run_exits",
]


class _CallableModule(types.ModuleType):
    """Lets ``edgeexit.export(...)`` call the function while the name stays the package, so
    ``edgeexit.export.model`` and friends keep working as submodules."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
