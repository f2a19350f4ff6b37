"""Change one segment's precision for a target: int8 (static QDQ, or dynamic MatMul-only for
transformers without calibration data) for ARM CPUs, fp16 for CUDA. Graph inputs and outputs
keep their fp32 type and names, so the manifest's carry/logits/score still apply.

Host-side only: imports onnx and onnxruntime.quantization.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import TargetError

# The heavy ops. Softmax/ReduceMax/ArgMax computing the exit score stay fp32: a score
# quantized to 1/255 steps would move every threshold.
STATIC_INT8_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Dynamic quantization of Conv becomes ConvInteger, which many ARM ORT builds lack; only
# transformer MatMuls are quantized dynamically.
DYNAMIC_INT8_OPS = ("MatMul",)


class _Feeds:
    """An onnxruntime CalibrationDataReader over recorded feeds (duck-typed: no import)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8_static(model: Any, feeds: Sequence[dict[str, np.ndarray]]) -> Any:
    """Static int8 QDQ (per-channel weights, MinMax activations over ``feeds``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    return _via_files(
        _pre_process(model),
        lambda src, dst: quantize_static(
            src,
            dst,
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_INT8_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        ),
    )


def quantize_int8_dynamic(model: Any) -> Any:
    """Dynamic int8 of MatMuls only, for models calibrated without data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _via_files(
        _pre_process(model),
        lambda src, dst: quantize_dynamic(
            src, dst, op_types_to_quantize=list(DYNAMIC_INT8_OPS), weight_type=QuantType.QInt8
        ),
    )


def convert_fp16(model: Any) -> Any:
    """fp16 weights and compute; inputs and outputs stay fp32 (Casts at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return topologically_sorted(convert_float_to_float16(model, keep_io_types=True))


def topologically_sorted(model: Any) -> Any:
    """``model`` with its nodes in dependency order (the fp16 converter appends the input
    Casts at the end of the graph, which ONNX Runtime tolerates but the ONNX checker not)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise TargetError(f"graph {graph.name!r} has a cycle or an undefined input")
        for node in runnable:
            ready.update(node.output)
            ordered.append(node)
        pending = [n for n in pending if not any(n is r for r in runnable)]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _pre_process(model: Any) -> Any:
    """Shape inference as onnxruntime.quantization recommends, without its ORT optimization
    pass: optimizing here, on the host, would bake in host-specific kernels."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    return _via_files(
        model,
        lambda src, dst: quant_pre_process(
            src, dst, skip_optimization=True, skip_symbolic_shape=True
        ),
    )


def has_op(model: Any, op_types: Sequence[str]) -> bool:
    return any(node.op_type in op_types for node in model.graph.node)


def _via_files(model: Any, quantize: Any) -> Any:
    """Run an onnxruntime.quantization function, which works on paths, on a ModelProto."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeexit-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "quant.onnx"
        onnx.save(model, src)
        try:
            quantize(src, dst)
        except (RuntimeError, ValueError, KeyError) as err:
            raise TargetError(f"onnxruntime.quantization failed: {err}") from err
        return onnx.load(dst)
