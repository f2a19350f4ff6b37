"""Pin a segment's ONNX IR version and opset to what a device's ONNX Runtime accepts.

An ORT build refuses models newer than it knows (ORT 1.17 rejects IR 10), so a bundle for an
older device is converted down with ``onnx.version_converter``, or refused with a message
that says what to do. Host-side only: imports onnx.
"""

from __future__ import annotations

from typing import Any

from edgeexit.errors import TargetError, first_line
from edgeexit.targets.spec import Target

DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return entry.version
    return 0


def pin_versions(model: Any, target: Target, *, name: str = "model") -> Any:
    """``model`` with opset <= target.max_opset and IR <= target.max_ir_version.

    Raises TargetError when the opset cannot be converted down or the IR version the opset
    needs is above the target's.
    """
    import onnx
    from onnx import helper, version_converter

    opset = default_opset(model)
    if opset > target.max_opset:
        try:
            model = version_converter.convert_version(model, target.max_opset)
        except (RuntimeError, ValueError, onnx.checker.ValidationError) as err:
            raise TargetError(
                f"{name} uses opset {opset}; {target.name} accepts at most {target.max_opset} "
                f"and onnx cannot convert it down ({_first_line(err)}); re-export with "
                f"opset <= {target.max_opset}"
            ) from err
    needed_ir = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if needed_ir > target.max_ir_version:
        raise TargetError(
            f"{name} needs ONNX IR {needed_ir} for its opsets "
            f"({_opsets(model)}); {target.name} accepts at most IR {target.max_ir_version}"
        )
    if model.ir_version > target.max_ir_version:
        model.ir_version = max(needed_ir, target.max_ir_version)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        # e.g. IR 10's 4-bit types or IR 9's float8 kept in a graph pinned to an older IR.
        raise TargetError(
            f"{name} is not valid at IR {model.ir_version} / opset {default_opset(model)} "
            f"for {target.name}: {_first_line(err)}"
        ) from err
    return model


def _opsets(model: Any) -> str:
    return ", ".join(f"{e.domain or 'ai.onnx'} {e.version}" for e in model.opset_import)


def _first_line(err: BaseException) -> str:
    # The converter's C++ assertions start with a source path; the reason follows "failed: ".
    return first_line(err).split("failed: ", 1)[-1]
