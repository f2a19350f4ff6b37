"""edgeexit: deploy multi-exit (early-exit) networks to edge devices.

``import edgeexit`` stays light enough for a device: the runtime needs only onnxruntime and
numpy. The export side (torch, onnx, onnxsim) is imported on first use of ``MultiExit``,
``save``, ``load`` or ``export``.
"""

from __future__ import annotations

import _signal  # signal's own core: signal.py would first build its enums (milliseconds)
import os as _os
import sys as _sys


def _ctrl_c_leaves_while_starting() -> None:
    """When this import is the command line starting (``python -m edgeexit``, or the
    ``edgeexit`` script), Ctrl-C exits 130 with one line from here on, instead of a
    KeyboardInterrupt traceback out of whichever import it lands in; ``edgeexit.cli.main``
    takes over as soon as it runs. A library import, or a handler someone set, is left as
    it is. (While ``python -m`` imports the package, ``sys.argv[0]`` is "-m".)"""
    program = _sys.argv[0] if _sys.argv else ""
    starting = program == "-m" or _os.path.basename(program) in ("edgeexit", "edgeexit.exe")
    if starting and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _leave)


def _leave(signum: int, frame: object) -> None:
    """Nothing is written while the command line starts: say so and leave at once (no
    exception, so no import can turn it into a traceback)."""
    _os.write(2, b"interrupted\n")
    _os._exit(130)


_ctrl_c_leaves_while_starting()

from edgeexit.lazy import lazy_getattr  # noqa: E402  (after Ctrl-C is seen to)

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
