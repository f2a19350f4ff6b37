"""Model files run no code, bundles are confined to their folder, and export's options take
effect: the trust boundaries on the host side."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fixtures.targets_digits import load_weights, write_bundle
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgeexit
from edgeexit.bundle import read_manifest
from edgeexit.errors import BundleError, CheckpointError
from edgeexit.examples.models import digits_cnn, example_inputs, tiny_bert
from edgeexit.export.checkpoint import checkpointable
from edgeexit.onnxproto import ProtoError, external_data_files
from edgeexit.runtime import Runtime

torch.set_num_threads(1)


# -- checkpoints ---------------------------------------------------------------------------


def saved(tmp_path: Path, **changes) -> Path:
    edgeexit.save(digits_cnn(width=4), tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8))
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    doc.update(changes)
    torch.save(doc, tmp_path / "m.pt")
    return tmp_path / "m.pt"


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        ("os:system", {"command": "touch {marker}"}),
        ("subprocess:run", {"args": ["touch", "{marker}"]}),
        ("subprocess:check_call", {"args": ["touch", "{marker}"]}),
        ("builtins:exec", {"source": "open({marker!r}, 'w')"}),
        ("pathlib:Path.touch", {"self": "{marker}"}),
        ("shutil:rmtree", {"path": "{marker}"}),
    ],
)
def test_a_factory_that_is_not_a_model_is_never_called(tmp_path, factory, kwargs):
    marker = str(tmp_path / "PWNED")
    filled = {
        k: [a.format(marker=marker) for a in v] if isinstance(v, list) else v.format(marker=marker)
        for k, v in kwargs.items()
    }
    path = saved(tmp_path, factory=factory, factory_kwargs=filled)
    with pytest.raises(CheckpointError, match="neither an nn.Module class nor a @checkpointable"):
        edgeexit.load(path)
    assert not os.path.exists(marker)


def test_a_pickle_with_reduce_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "edgeexit.checkpoint/1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="holds pickled code.*`trust_pickle`"):
        edgeexit.load(tmp_path / "evil.pt")
    assert not marker.exists()


class Plain(nn.Module):
    """A user's model class whose constructor takes arguments."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.segments = nn.ModuleList([nn.Linear(3, width)])
        self.exits = nn.ModuleList([nn.Linear(width, 2)])


@checkpointable
def marked(width: int = 4) -> nn.Module:
    return Plain(width)


@pytest.mark.parametrize("factory", [f"{__name__}:Plain", f"{__name__}:marked"])
def test_model_classes_and_marked_factories_are_called(tmp_path, factory):
    model = Plain(5)
    edgeexit.save(model, tmp_path / "p.pt", example_inputs=torch.rand(2, 3), factory=factory,
                  factory_kwargs={"width": 5})  # fmt: skip
    loaded = edgeexit.load(tmp_path / "p.pt").model
    assert isinstance(loaded, Plain) and loaded.segments[0].out_features == 5


def test_save_refuses_a_factory_load_would_refuse(tmp_path):
    with pytest.raises(CheckpointError, match="will not call it"):
        edgeexit.save(Plain(), tmp_path / "p.pt", example_inputs=torch.rand(2, 3),
                      factory="os:getcwd")  # fmt: skip
    assert not (tmp_path / "p.pt").exists()


HOSTILE_MODULE = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\nNet = object\n"


def hostile_module(tmp_path: Path, monkeypatch, name: str) -> Path:
    """A module on sys.path whose import writes a marker file; returns the marker."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "lib").mkdir(exist_ok=True)
    (tmp_path / "lib" / f"{name}.py").write_text(HOSTILE_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    return marker


@pytest.mark.parametrize("factory", ["this:nothing", "edgeexit_hostile_a:Net", "no_such_pkg:f"])
def test_a_module_a_file_names_is_never_imported(tmp_path, monkeypatch, factory):
    marker = hostile_module(tmp_path, monkeypatch, "edgeexit_hostile_a")
    module = factory.partition(":")[0]
    assert module not in sys.modules  # (else this test could not tell)
    path = saved(tmp_path, factory=factory)
    with pytest.raises(CheckpointError) as info:
        edgeexit.load(path)
    message = str(info.value)
    assert "imports no module a model file names" in message and "\n" not in message
    assert f"`factory` {factory}" in message and "`trust_pickle`" in message
    assert module not in sys.modules and not marker.exists()


def test_a_factory_is_found_without_running_module_getattr_hooks(tmp_path, monkeypatch):
    """An imported module's ``__getattr__`` may import more: it is not called."""
    marker = tmp_path / "LOOKED_UP"
    lazy = types.ModuleType("edgeexit_lazy_test")
    lazy.__getattr__ = lambda name: marker.write_text(name)
    monkeypatch.setitem(sys.modules, "edgeexit_lazy_test", lazy)
    with pytest.raises(CheckpointError, match="defines no 'Net'"):
        edgeexit.load(saved(tmp_path, factory="edgeexit_lazy_test:Net"))
    assert not marker.exists()


def test_a_factory_the_caller_names_is_used_instead_of_the_files(tmp_path, monkeypatch):
    marker = hostile_module(tmp_path, monkeypatch, "edgeexit_hostile_b")
    edgeexit.save(Plain(5), tmp_path / "p.pt", example_inputs=torch.rand(2, 3),
                  factory=f"{__name__}:Plain", factory_kwargs={"width": 5})  # fmt: skip
    doc = torch.load(tmp_path / "p.pt", weights_only=True)
    doc["factory"] = "edgeexit_hostile_b:Net"
    torch.save(doc, tmp_path / "p.pt")
    for named in (f"{__name__}:Plain", Plain, marked):
        model = edgeexit.load(tmp_path / "p.pt", factory=named).model
        assert isinstance(model, Plain) and model.segments[0].out_features == 5
    assert "edgeexit_hostile_b" not in sys.modules and not marker.exists()
    with pytest.raises(CheckpointError, match="will not call it"):
        edgeexit.load(tmp_path / "p.pt", factory="os:getcwd")  # named, but still a model?


def test_a_factory_for_a_checkpoint_that_needs_none_is_refused(tmp_path):
    from edgeexit import MultiExit

    model = MultiExit([nn.Linear(3, 4)], [nn.Linear(4, 2)])
    edgeexit.save(model, tmp_path / "p.pt", example_inputs=torch.rand(2, 3))
    with pytest.raises(CheckpointError, match="captured programs.*takes no `factory`"):
        edgeexit.load(tmp_path / "p.pt", factory=f"{__name__}:Plain")


@pytest.mark.slow
def test_edgeexits_own_factories_load_where_they_are_not_imported(tmp_path):
    """The demo's checkpoints name edgeexit.examples.models: the tool's own code, imported
    on the file's word; nothing else is (edgeexit.__main__ least of all)."""
    import subprocess

    path = saved(tmp_path)
    code = (
        "import sys, edgeexit\n"
        "assert 'edgeexit.examples.models' not in sys.modules\n"
        "print(type(edgeexit.load(sys.argv[1]).model).__name__)\n"
        "assert 'edgeexit.__main__' not in sys.modules\n"
    )
    package = str(Path(edgeexit.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": package},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MultiExit"


def test_trusting_a_pickle_warns_and_names_the_file(tmp_path, caplog):
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")
    with caplog.at_level(logging.WARNING, logger="edgeexit"):
        ckpt = edgeexit.load(tmp_path / "whole.pt", trust_pickle=True)
    assert isinstance(ckpt.model, nn.Linear)
    assert "whole.pt" in caplog.text and "runs any code" in caplog.text


# -- bundles stay inside their folder ------------------------------------------------------


def put(bundle: Path, change) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    change(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc))


def test_a_host_file_is_refused_before_it_is_read(tmp_path):
    """No oracle: the error is the same whether or not a guessed digest is right."""
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"the host's secret")
    right = hashlib.sha256(secret.read_bytes()).hexdigest()
    messages = set()
    for digest in (right, "0" * 64):
        bundle = write_bundle(tmp_path / f"b{digest[:2]}", load_weights())

        def point(doc, digest=digest):
            doc["segments"][0].update(file=str(secret), sha256=digest)

        put(bundle, point)
        with pytest.raises(BundleError) as info:
            Runtime(bundle)
        messages.add(str(info.value).replace(str(bundle), "<bundle>"))
    assert len(messages) == 1 and "plain file name" in messages.pop()


def test_a_symlink_inside_the_bundle_is_refused(tmp_path):
    bundle = write_bundle(tmp_path / "b", load_weights())
    (bundle / "segment_01.onnx").rename(tmp_path / "elsewhere.onnx")
    os.symlink(tmp_path / "elsewhere.onnx", bundle / "segment_01.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        Runtime(bundle)


def external_bundle(tmp_path: Path, *, listed: bool) -> Path:
    bundle = write_bundle(tmp_path / "b", load_weights())
    seg = bundle / "segment_00.onnx"
    onnx.save(
        onnx.load(seg), seg, save_as_external_data=True, location="w.bin", size_threshold=64
    )  # fmt: skip  (weights out; the tiny axes tensor stays in)

    def relist(doc):
        entry = doc["segments"][0]
        entry["sha256"] = hashlib.sha256(seg.read_bytes()).hexdigest()
        if listed:
            digest = hashlib.sha256((bundle / "w.bin").read_bytes()).hexdigest()
            entry["external_data"] = [{"file": "w.bin", "sha256": digest}]

    put(bundle, relist)
    return bundle


def test_listed_external_weights_load_and_give_the_same_answers(tmp_path):
    plain = write_bundle(tmp_path / "plain", load_weights())
    bundle = external_bundle(tmp_path, listed=True)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    a, b = Runtime(plain).run(x), Runtime(bundle).run(x)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_unlisted_or_tampered_external_weights_are_refused(tmp_path):
    bundle = external_bundle(tmp_path / "one", listed=False)
    with pytest.raises(BundleError, match="reads weights from 'w.bin', which the manifest"):
        Runtime(bundle)
    bundle = external_bundle(tmp_path / "two", listed=True)
    data = bytearray((bundle / "w.bin").read_bytes())
    data[10] ^= 1
    (bundle / "w.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="external weights .* do not match their sha256"):
        Runtime(bundle)


def test_an_external_location_outside_the_bundle_is_refused(tmp_path):
    bundle = external_bundle(tmp_path, listed=True)
    seg = bundle / "segment_00.onnx"
    model = onnx.load(seg, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save(model, seg)
    put(
        bundle,
        lambda d: d["segments"][0].update(sha256=hashlib.sha256(seg.read_bytes()).hexdigest()),
    )
    with pytest.raises(BundleError, match="external data location is '../../etc/passwd'"):
        Runtime(bundle)


def test_the_scanner_finds_external_tensors_in_subgraphs_and_attributes():
    big = numpy_helper.from_array(np.ones(4, np.float32), "w")
    big.data_location = TensorProto.EXTERNAL
    entry = big.external_data.add()
    entry.key, entry.value = "location", "outer.bin"
    inner = numpy_helper.from_array(np.ones(2, np.float32), "c")
    inner.data_location = TensorProto.EXTERNAL
    entry = inner.external_data.add()
    entry.key, entry.value = "location", "inner.bin"
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=inner)], "branch", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [big],
    )
    data = helper.make_model(graph).SerializeToString()
    assert sorted(external_data_files(data)) == ["inner.bin", "outer.bin"]
    assert external_data_files(helper.make_model(branch).SerializeToString()) == ["inner.bin"]
    with pytest.raises(ProtoError):
        external_data_files(data[:-3])


# -- export options that take effect -------------------------------------------------------


def test_patience_is_written_and_the_runtime_follows_it(tmp_path):
    torch.manual_seed(0)
    model = digits_cnn(width=4).eval()
    x = torch.rand(16, 1, 8, 8) * 4 - 2
    edgeexit.export(
        model, x, tmp_path / "b", criterion="patience", criterion_params={"patience": 1}
    )
    manifest = read_manifest(tmp_path / "b")
    assert manifest.criterion_params == {"patience": 1}
    assert manifest.thresholds == (1.0,) * manifest.num_exits
    rt = Runtime(tmp_path / "b")
    result = rt.run(x.numpy())
    predictions = rt.run_all_exits(x.numpy()).logits.argmax(axis=2)  # [exits, n]
    # PABEE with patience 1: leave at the first exit whose prediction equals the one before.
    agree = predictions[1:] == predictions[:-1]
    expected = np.where(agree.any(axis=0), agree.argmax(axis=0) + 1, manifest.num_exits - 1)
    np.testing.assert_array_equal(result.exit_index, expected)


def test_the_cli_patience_option_reaches_the_manifest(tmp_path):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    edgeexit.save(digits_cnn(width=4), tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8))
    args = ["export", str(tmp_path / "m.pt"), "-o", str(tmp_path / "b"), "-c", "patience",
            "--patience", "3"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    manifest = read_manifest(tmp_path / "b")
    assert manifest.criterion_params == {"patience": 3} and set(manifest.thresholds) == {3.0}


@pytest.mark.slow
def test_the_dynamo_fallback_works_at_default_settings(tmp_path, monkeypatch):
    """For a module TorchScript cannot export, the fallback used to fail at the default
    opset 17, which dynamo cannot write; it now writes opset 18 (the target allowing)."""
    from edgeexit.export import convert

    def torchscript_fails(*args):
        raise RuntimeError("Exporting the operator 'aten::something' is not supported")

    monkeypatch.setattr(convert, "_torchscript", torchscript_fails)
    torch.manual_seed(0)
    model = tiny_bert(layers=2, torch_attention=True)
    result = edgeexit.export(model, example_inputs("tiny_bert"), tmp_path / "b")
    assert result.manifest.extra["exporter"] == "dynamo"
    assert result.manifest.extra["opset"] == 18 and result.report.ok
    with pytest.raises(edgeexit.EdgeExitError, match="dynamo exporter needs opset >= 18"):
        edgeexit.export(model, example_inputs("tiny_bert"), tmp_path / "c", opset=17)


def test_calibrated_thresholds_are_values_of_the_score_dtype(tmp_path):
    from edgeexit.calibrate import Budget
    from edgeexit.calibrate.pipeline import calibrate_bundle

    bundle = write_bundle(tmp_path / "b", load_weights())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.random((80, 1, 8, 8), dtype=np.float32),
             y=rng.integers(0, 10, 80))  # fmt: skip
    report = calibrate_bundle(bundle, tmp_path / "cal.npz", Budget(max_accuracy_drop=0.05))
    for t in report.thresholds:
        assert math.isinf(t) or t == float(np.float32(t))
