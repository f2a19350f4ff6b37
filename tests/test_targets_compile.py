"""Cross-compiling a bundle: IR/opset pinning, int8 QDQ for ARM, fp16 for CUDA, the accuracy
check against fp32, and nothing written when it fails."""

import collections
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixtures.targets_digits import load_weights, segment_model, write_bundle, write_calib

from edgeexit.bundle import INPUT_SUM, read_manifest, verify_segments
from edgeexit.compile.compiler import CompileOptions, compile_bundle
from edgeexit.compile.host_chain import host_sessions, run_chain
from edgeexit.compile.versions import default_opset, pin_versions
from edgeexit.data import Dataset, load_data
from edgeexit.errors import TargetError, ValidationError
from edgeexit.targets import load_target

ONE_THREAD = CompileOptions(threads=1)


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    bundle = write_bundle(root / "fp32", load_weights())
    calib = load_data(write_calib(root / "calib.npz"), read_manifest(bundle).inputs)
    return bundle, calib


def op_counts(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


def test_int8_rpi4_bundle_is_within_one_point_of_fp32(fp32_bundle, tmp_path):
    src, calib = fp32_bundle
    report = compile_bundle(src, tmp_path / "rpi4", "rpi4", calib=calib, options=ONE_THREAD)
    assert report.precision == "int8" and report.method == "int8-static-qdq"
    assert report.reference == "labels" and report.samples == 512
    assert len(report.exits) == 3
    for e in report.exits:
        assert e.reference_accuracy > 0.85  # the fixture model is trained, not random
        assert e.drop_pp <= 1.0
    manifest = read_manifest(tmp_path / "rpi4")
    assert manifest.extra["precision"] == "int8" and manifest.extra["target"] == "rpi4"
    assert [e["drop_pp"] for e in manifest.extra["compile"]["exits"]] == pytest.approx(
        [e.drop_pp for e in report.exits], abs=1e-3
    )
    for path in verify_segments(tmp_path / "rpi4", manifest):  # new sha256s recorded
        ops = op_counts(path)
        assert ops["QuantizeLinear"] and ops["DequantizeLinear"]
        assert not ops["ConvInteger"] and not ops["MatMulInteger"]
        model = onnx.load(path)
        assert model.ir_version <= 9 and default_opset(model) <= 20
        assert all(
            o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output
        )


def test_int8_bundle_runs_in_plain_onnxruntime_by_the_manifest(fp32_bundle, tmp_path):
    src, calib = fp32_bundle
    compile_bundle(src, tmp_path / "rpi5", "rpi5", calib=calib, options=ONE_THREAD)
    manifest = read_manifest(tmp_path / "rpi5")
    models = [onnx.load(p) for p in verify_segments(tmp_path / "rpi5", manifest)]
    out = run_chain(host_sessions(models, threads=1), manifest, calib.inputs[:1])
    assert [lg.dtype for lg in out.logits] == [np.float32] * 3
    accuracy = np.mean(out.logits[-1].argmax(1) == calib.labels)
    assert accuracy > 0.85


def test_fp16_cuda_bundle_keeps_fp32_io(fp32_bundle, tmp_path):
    src, calib = fp32_bundle
    report = compile_bundle(src, tmp_path / "cuda", "cuda", calib=calib, options=ONE_THREAD)
    assert report.method == "fp16" and all(e.drop_pp <= 1.0 for e in report.exits)
    model = onnx.load(tmp_path / "cuda" / "segment_00.onnx")
    weights = [t for t in model.graph.initializer if t.name.startswith("conv0")]
    assert {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
    io = [*model.graph.input, *model.graph.output]
    assert {v.type.tensor_type.elem_type for v in io} == {onnx.TensorProto.FLOAT}
    assert [o.name for o in model.graph.output] == ["carry_0", "logits_0", "score_0", INPUT_SUM]
    onnx.checker.check_model(model)


def test_exit_losing_too_much_fails_and_writes_nothing(fp32_bundle, tmp_path):
    src, calib = fp32_bundle
    # One wild sample stretches MinMax activation ranges, so int8 loses its resolution: the
    # classic calibration failure the accuracy check exists to catch.
    x = np.concatenate([calib.inputs[0], calib.inputs[0][:1] * 1e4])
    wild = Dataset((x,), np.concatenate([calib.labels, calib.labels[:1]]))
    options = CompileOptions(threads=1, calib_samples=len(x))
    with pytest.raises(
        ValidationError, match=r"loses too much accuracy: exit \d .*nothing written"
    ):
        compile_bundle(src, tmp_path / "bad", "rpi4", calib=wild, options=options)
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp directory left behind


def test_int8_without_data_refuses_convolutions(fp32_bundle, tmp_path):
    src, _ = fp32_bundle
    with pytest.raises(TargetError, match="needs calibration data.*ConvInteger"):
        compile_bundle(src, tmp_path / "out", "rpi4", options=ONE_THREAD)


def test_compiling_a_compiled_bundle_is_refused(fp32_bundle, tmp_path):
    src, calib = fp32_bundle
    compile_bundle(src, tmp_path / "cuda", "cuda", calib=calib, options=ONE_THREAD)
    with pytest.raises(TargetError, match="already fp16; compile from an fp32 bundle"):
        compile_bundle(tmp_path / "cuda", tmp_path / "again", "rpi4", calib=calib)


@pytest.mark.parametrize(("max_opset", "max_ir"), [(20, 9), (17, 8), (14, 7)])
def test_opset_and_ir_are_pinned_without_changing_outputs(max_opset, max_ir):
    model = segment_model(0, load_weights()[0])  # opset 21, IR 10
    target = replace(load_target("x86-cpu"), max_opset=max_opset, max_ir_version=max_ir)
    pinned = pin_versions(model, target)
    assert default_opset(pinned) == max_opset and pinned.ir_version <= max_ir
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    before, after = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )
        for m in (model, pinned)
    )
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_pinning_refuses_what_cannot_be_converted():
    model = segment_model(0, load_weights()[0])
    x86 = load_target("x86-cpu")
    with pytest.raises(TargetError, match="opset 21; x86-cpu accepts at most 9 .*re-export"):
        pin_versions(model, replace(x86, max_opset=9))
    with pytest.raises(TargetError, match="needs ONNX IR 10 .*accepts at most IR 5"):
        pin_versions(model, replace(x86, max_ir_version=5))


def mlp_bundle(root):
    """A MatMul-only (transformer-like) two-exit bundle with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeexit.bundle import InputSpec, Manifest, SegmentSpec, sha256_file, write_manifest

    rng = np.random.default_rng(0)
    root.mkdir()
    specs = []
    for i in range(2):
        x_name, carry = ("x" if i == 0 else "h0"), f"h{i}"
        inits = [
            numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), f"v{i}"),
        ]
        nodes = [
            helper.make_node("MatMul", [x_name, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [carry]),
            helper.make_node("MatMul", [carry, f"v{i}"], [f"logits_{i}"]),
            helper.make_node("Softmax", [f"logits_{i}"], [f"p{i}"], axis=1),
            helper.make_node("ReduceMax", [f"p{i}"], [f"score_{i}"], axes=[1], keepdims=0),
        ]
        vi = helper.make_tensor_value_info
        outputs = [vi(f"logits_{i}", TensorProto.FLOAT, ["batch", 10])]
        outputs.append(vi(f"score_{i}", TensorProto.FLOAT, ["batch"]))
        if i == 0:
            outputs.insert(0, vi(carry, TensorProto.FLOAT, ["batch", 64]))
        graph = helper.make_graph(
            nodes, f"s{i}", [vi(x_name, TensorProto.FLOAT, ["batch", 64])], outputs, inits
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = root / f"segment_{i:02d}.onnx"
        onnx.save(model, path)
        specs.append(
            SegmentSpec(
                path.name,
                sha256_file(path),
                (x_name,),
                (carry,) if i == 0 else (),
                f"logits_{i}",
                f"score_{i}",
            )
        )
    write_manifest(
        root,
        Manifest(
            (InputSpec("x", "float32", ("batch", 64)),), tuple(specs), "confidence", (0.9, 0.0)
        ),
    )
    return root


def test_int8_without_data_quantizes_transformer_matmuls_dynamically(tmp_path):
    src = mlp_bundle(tmp_path / "mlp")
    report = compile_bundle(src, tmp_path / "rpi4", "rpi4", options=ONE_THREAD)
    assert report.method == "int8-dynamic-matmul"
    assert report.exits == () and "NOT checked" in report._caption()
    ops = op_counts(tmp_path / "rpi4" / "segment_00.onnx")
    assert ops["MatMulInteger"] == 2 and not ops["ConvInteger"]


def test_offline_x86_optimized_segments_are_refused_for_arm(fp32_bundle, tmp_path):
    from edgeexit.bundle import sha256_file, write_manifest

    src = mlp_bundle(tmp_path / "mlp")
    seg = src / "segment_00.onnx"
    model = onnx.load(seg)
    # What an offline ORT_ENABLE_ALL pass on x86 leaves behind: NCHWc-domain nodes.
    model.graph.node[1].domain = "com.microsoft.nchwc"
    onnx.save(model, seg)
    manifest = read_manifest(src)
    first = replace(manifest.segments[0], sha256=sha256_file(seg))
    write_manifest(src, replace(manifest, segments=(first, *manifest.segments[1:])))
    with pytest.raises(TargetError, match="com.microsoft.nchwc nodes .*only x86 builds load"):
        compile_bundle(src, tmp_path / "out", "rpi4")


def test_ort_format_bundle_runs_like_the_onnx_one(fp32_bundle, tmp_path):
    from edgeexit import Runtime

    src, calib = fp32_bundle
    for name, ort_format in (("onnx", False), ("ort", True)):
        options = CompileOptions(threads=1, ort_format=ort_format)
        compile_bundle(src, tmp_path / name, "rpi4", calib=calib, options=options)
    manifest = read_manifest(tmp_path / "ort")
    assert [s.file for s in manifest.segments] == [f"segment_{i:02d}.ort" for i in range(3)]
    assert not list((tmp_path / "ort").glob("*.onnx"))
    # The .ort file holds the graph as ORT_ENABLE_BASIC left it; compare at that level. At
    # "all", this x86 host would fuse the .onnx file's QDQ pairs into its own int8 kernels,
    # whose rounding differs between CPUs (AVX2 saturates), which is not what a Pi runs.
    basic = tmp_path / "basic.toml"
    basic.write_text(
        'name = "basic"\narch = "x86_64"\nproviders = ["CPUExecutionProvider"]\n'
        'graph_optimization = "basic"\nintra_op_threads = 1\n'
    )
    x = calib.inputs[0][:64]
    results = [Runtime(tmp_path / name, target=basic).run(x) for name in ("onnx", "ort")]
    np.testing.assert_array_equal(results[0].exit_index, results[1].exit_index)
    np.testing.assert_allclose(results[0].logits, results[1].logits, atol=1e-5)


def test_calibration_data_of_the_wrong_shape_is_refused(fp32_bundle, tmp_path):
    from edgeexit.errors import InputError

    src, _ = fp32_bundle
    wrong = Dataset((np.zeros((4, 1, 9, 9), np.float32),), None)
    with pytest.raises(InputError, match=r"input .x. has shape \(4, 1, 9, 9\); expected"):
        compile_bundle(src, tmp_path / "out", "rpi4", calib=wrong)
    assert not (tmp_path / "out").exists()


def test_calibration_data_may_be_given_as_a_path(fp32_bundle, tmp_path):
    src, _ = fp32_bundle
    calib_path = write_calib(tmp_path / "calib.npz")
    report = compile_bundle(src, tmp_path / "cuda", "cuda", calib=calib_path, options=ONE_THREAD)
    assert report.samples == 512 and report.reference == "labels"
