"""edgeexit: deploy multi-exit (early-exit) networks to edge devices.

``import edgeexit`` stays light enough for a device: the runtime needs only onnxruntime and
numpy. The export side (torch, onnx, onnxsim) is imported on first use of ``MultiExit``,
``save``, ``load`` or ``export``.
"""

from __future__ import annotations

from edgeexit.lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "Runtime": "edgeexit.runtime",
    "Result": "edgeexit.runtime",
    "MultiExit": "edgeexit.export.model",
    "save": "edgeexit.export.checkpoint",
    "load": "edgeexit.export.checkpoint",
    "checkpointable": "edgeexit.export.checkpoint",
    "export": "edgeexit.export",
    "EdgeExitError": "edgeexit.errors",
    "Target": "edgeexit.targets",
    "load_target": "edgeexit.targets",
}

__all__ = sorted(_LAZY)


# edgeexit.export is the (callable) export package itself
__getattr__ = lazy_getattr(__name__, _LAZY, modules=frozenset({"export"}))
