"""Compile a validated fp32 bundle for a device target: ONNX versions pinned to the
device's, int8 or fp16 precision checked exit by exit against fp32, optionally the ORT
format. Host only: imports onnx and onnxruntime.quantization (on first use)."""

from edgeexit.compile.compiler import CompileOptions, compile_bundle
from edgeexit.compile.report import CompileReport

__all__ = ["CompileOptions", "CompileReport", "compile_bundle"]
