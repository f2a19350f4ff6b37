"""Save segments in the ORT format (.ort), which minimal (size-reduced) ONNX Runtime builds
for small devices load instead of .onnx.

Only basic, platform-independent optimizations are applied before saving: extended/all
levels would bake in kernels of the host (x86 NCHWc layouts, host-specific fusions).
"""

from __future__ import annotations

from pathlib import Path

from edgeexit.errors import TargetError


def save_ort_format(onnx_path: Path) -> Path:
    """Write ``onnx_path`` as ``<stem>.ort`` next to it and remove the .onnx file."""
    import onnxruntime as ort

    from edgeexit.runtime.session import ORT_ERRORS

    out = onnx_path.with_suffix(".ort")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as err:
        raise TargetError(f"cannot save {onnx_path.name} in the ORT format: {err}") from err
    onnx_path.unlink()
    return out
