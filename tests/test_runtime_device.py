"""The device-carry path (carries as OrtValues, compacted by ORT Gather graphs), the CUDA
provider when a GPU is lent, and the device-import rule."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from runtime_bundles import exported

from edgeexit.runtime import Runtime
from edgeexit.runtime.chain import Chain
from edgeexit.runtime.gather import RowMover, row_graph

CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def spread_thresholds(rt: Runtime, inputs) -> list[float]:
    scores = rt.run_all_exits(inputs).scores
    return [float(np.quantile(s, 0.5)) for s in scores[:-1]] + [math.inf]


def test_row_graphs_are_valid_onnx():
    import onnx

    for op in ("Gather", "Identity"):
        model = onnx.load_from_string(row_graph(op, np.dtype(np.float32), 3))
        onnx.checker.check_model(model, full_check=True)


def test_row_mover_compacts_in_place_on_ortvalues():
    from edgeexit.runtime.buffers import Buffer
    from edgeexit.runtime.shapes import Layout

    layout = Layout((3, 2), np.dtype(np.int64))
    buffer, scratch = Buffer(layout, 8, "cpu"), Buffer(layout, 8, "cpu")
    rows = np.arange(6 * 6, dtype=np.int64).reshape(6, 3, 2)
    mover = RowMover(["CPUExecutionProvider"], "cpu")
    mover.upload(rows, buffer)
    keep = np.array([1, 4, 5])
    mover.compact(buffer, scratch, 6, keep)
    np.testing.assert_array_equal(mover.download(buffer, 3), rows[keep])


@pytest.mark.parametrize("name", ["digits_two_scale", "tiny_bert"])
def test_ortvalue_carries_give_the_numpy_results(name):
    """The CUDA code path (carries as OrtValues that never touch numpy), on CPU memory."""
    ex = exported(name)
    host = Runtime(ex.bundle, threads=1)
    device = Runtime(ex.bundle, threads=1)
    heads = device._with_heads()  # the thresholds below enable every exit
    device._chain = device._heads_chain = Chain(device.manifest, heads.sessions, heads.layouts,
                                                "cpu")  # fmt: skip
    thresholds = spread_thresholds(host, ex.inputs)
    want, got = (
        host.run(ex.inputs, thresholds=thresholds),
        device.run(ex.inputs, thresholds=thresholds),
    )
    assert len(set(want.exit_index.tolist())) > 1
    np.testing.assert_array_equal(got.exit_index, want.exit_index)
    np.testing.assert_array_equal(got.logits, want.logits)
    carry, _, _ = device.run_segment(0, list(ex.inputs))
    np.testing.assert_array_equal(
        device.run_segment(1, carry)[1], host.run_all_exits(ex.inputs).logits[1]
    )


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs onnxruntime with the CUDA execution provider")
def test_cuda_provider_keeps_carries_on_the_gpu_and_matches_cpu():
    ex = exported("digits_resnet")
    cpu = Runtime(ex.bundle, threads=1)
    gpu = Runtime(ex.bundle, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu._chain.carry_device == "cuda"
    carry_buffers = [b for outs in gpu._chain.outputs for n, b in outs.items() if "carry" in n]
    assert carry_buffers and all(b.array is None and b.device == "cuda" for b in carry_buffers)
    thresholds = spread_thresholds(cpu, ex.inputs)
    want, got = cpu.run(ex.inputs, thresholds=thresholds), gpu.run(ex.inputs, thresholds=thresholds)
    assert (got.exit_index == want.exit_index).mean() > 0.9  # GPU kernels round differently
    same = got.exit_index == want.exit_index
    np.testing.assert_allclose(got.logits[same], want.logits[same], atol=1e-3)


def test_runtime_does_not_import_the_export_side():
    code = (
        "import edgeexit, sys\n"
        "from edgeexit.runtime import Runtime\n"
        "from edgeexit.cli import run\n"
        "heavy = ('torch', 'onnx', 'onnxsim', 'onnxscript')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
