"""Weights several segments hold (ALBERT's one shared layer) are stored once in the bundle,
the runtime reads them through the manifest's sha256 list, and compiling keeps it so."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import edgeexit  # noqa: E402
from edgeexit.bundle import read_manifest  # noqa: E402
from edgeexit.compile.compiler import CompileOptions, compile_bundle  # noqa: E402
from edgeexit.compile.shared_weights import SHARED_FILE, share_weights  # noqa: E402
from edgeexit.errors import BundleError  # noqa: E402
from edgeexit.examples.hf import multi_exit_encoder  # noqa: E402
from edgeexit.export.bundle_export import export_monolithic  # noqa: E402

CONFIG = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
              vocab_size=100, max_position_embeddings=40, embedding_size=32)  # fmt: skip


def tokens():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, 100, (3, 10), generator=gen), torch.ones(3, 10, dtype=torch.int64)


@pytest.fixture(scope="module")
def albert(tmp_path_factory):
    torch.manual_seed(0)
    model = multi_exit_encoder(tf.AlbertModel(tf.AlbertConfig(**CONFIG)).eval(), 3).eval()
    root = tmp_path_factory.mktemp("albert")
    # without bodies: at this size their graph structure (~20 KB each) would dominate the
    # sizes compared (benchmarks/shared_weights.py measures a real-sized model with them)
    edgeexit.export(model, tokens(), root / "bundle", bodies=False)  # validated vs PyTorch
    export_monolithic(model, tokens(), root / "one.onnx")
    return model, root


def size(folder):
    return sum(f.stat().st_size for f in folder.iterdir())


def test_an_albert_bundle_stores_its_shared_layer_once(albert):
    _, root = albert
    bundle = root / "bundle"
    assert size(bundle) <= 1.15 * (root / "one.onnx").stat().st_size
    manifest = read_manifest(bundle)
    record = manifest.extra["shared_weights"]
    assert record["tensors"] >= 4 and record["saved_bytes"] > record["file_bytes"]
    readers = [s for s in manifest.segments if s.external_data]
    assert len(readers) == manifest.num_exits  # the one layer runs in every segment
    assert {e.file for s in readers for e in s.external_data} == {SHARED_FILE}
    ids, mask = tokens()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    whole = ort.InferenceSession(str(root / "one.onnx"), providers=["CPUExecutionProvider"])
    final = whole.run([f"logits_{manifest.num_exits - 1}"], feeds)[0]
    runtime = edgeexit.Runtime(bundle, threads=1)
    out = runtime.run((ids.numpy(), mask.numpy()), thresholds=[float("inf")] * manifest.num_exits)
    np.testing.assert_allclose(out.logits, final, atol=1e-5)


def test_changed_shared_weights_are_refused(albert, tmp_path):
    _, root = albert
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in (root / "bundle").iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / SHARED_FILE).read_bytes())
    data[100] ^= 1
    (copy / SHARED_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="shared_weights.bin do not match their sha256"):
        edgeexit.Runtime(copy)


@pytest.mark.parametrize("ort_format", [False, True], ids=["onnx", "ort-format"])
def test_compiling_keeps_the_weights_stored_once_or_inlines_them(albert, tmp_path, ort_format):
    _, root = albert
    out = tmp_path / "fp16"
    options = CompileOptions(threads=1, ort_format=ort_format)
    compile_bundle(root / "bundle", out, "x86-cpu", options=options)
    manifest = read_manifest(out)
    listed = {e.file for s in manifest.segments for e in s.external_data}
    assert (out / SHARED_FILE).exists() == (not ort_format) == bool(listed)
    ids, mask = tokens()
    reference = edgeexit.Runtime(root / "bundle", threads=1).run((ids.numpy(), mask.numpy()))
    compiled = edgeexit.Runtime(out, threads=1).run((ids.numpy(), mask.numpy()))
    np.testing.assert_allclose(compiled.logits, reference.logits, atol=1e-3)


def test_nothing_in_common_writes_no_file(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    for i in range(2):  # different weights, and a tiny identical one (kept inline)
        big = numpy_helper.from_array(np.full((32, 32), i, np.float32), "w")
        tiny = numpy_helper.from_array(np.ones(4, np.float32), "b")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
                 helper.make_node("Add", ["h", "b"], ["y"])]  # fmt: skip
        save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [big, tiny])),
             tmp_path / f"g{i}.onnx")  # fmt: skip
    before = {f: (tmp_path / f).read_bytes() for f in ("g0.onnx", "g1.onnx")}
    done = share_weights(tmp_path, ["g0.onnx", "g1.onnx"])
    assert done.tensors == 0 and not (tmp_path / SHARED_FILE).exists()
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    doc = json.dumps(done.__dict__)
    assert "saved_bytes" in doc


def test_inspect_counts_the_shared_weights_once(albert):
    from edgeexit.inspection import describe_bundle

    _, root = albert
    info = describe_bundle(root / "bundle")
    assert info.shared_bytes == (root / "bundle" / SHARED_FILE).stat().st_size
    listed = sum(s.size_bytes for s in info.segments) + info.shared_bytes
    assert listed + (root / "bundle" / "manifest.json").stat().st_size == size(root / "bundle")
