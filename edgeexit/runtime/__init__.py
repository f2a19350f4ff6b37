"""The on-device runtime: run a bundle's segments under ONNX Runtime with per-sample exits.

Imports only onnxruntime and numpy (never torch or onnx), so a device can install just
``pip install edgeexit``.
"""

from edgeexit.runtime.result import ExitOutputs, Result
from edgeexit.runtime.runtime import Runtime

__all__ = ["ExitOutputs", "Result", "Runtime"]
