"""Save segments in the ORT format (.ort), which minimal (size-reduced) ONNX Runtime builds
for small devices load instead of .onnx.

Only basic, platform-independent optimizations are applied before saving: extended/all
levels would bake in kernels of the host (x86 NCHWc layouts, host-specific fusions).
"""

from __future__ import annotations

from pathlib import Path

from edgeexit.errors import TargetError
from edgeexit.runtime.session import cpu_session


def save_ort_format(onnx_path: Path) -> Path:
    """Write ``onnx_path`` as ``<stem>.ort`` next to it and remove the .onnx file."""
    out = onnx_path.with_suffix(".ort")
    cpu_session(onnx_path, what=f"{onnx_path.name} to save it in the ORT format",
                optimization="basic", save_as=out, error=TargetError)  # fmt: skip
    onnx_path.unlink()
    return out
