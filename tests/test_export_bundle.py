"""Exporting the digits ResNet: the manifest, the dynamic batch, the monolithic baseline,
and each exit matching PyTorch at another batch size with plain onnxruntime."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgeexit
from edgeexit.bundle import read_manifest, verify_segments
from edgeexit.examples.models import digits_resnet
from edgeexit.export import export_monolithic, run_exits

torch.set_num_threads(1)
RUNNER = Path(__file__).parents[1] / "docs" / "examples" / "run_bundle.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("run_bundle", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = digits_resnet(width=8).eval()
    out = tmp_path_factory.mktemp("b") / "bundle"
    result = edgeexit.export(model, torch.rand(2, 1, 8, 8), out)
    return model, out, result


def test_manifest_follows_the_contract(resnet_bundle):
    _, out, result = resnet_bundle
    manifest = read_manifest(out)
    verify_segments(out, manifest)
    assert manifest == result.manifest
    assert manifest.num_exits == 4 and all(math.isinf(t) for t in manifest.thresholds)
    assert manifest.inputs[0].shape == ("batch", 1, 8, 8)
    assert manifest.segments[1].inputs == manifest.segments[0].carry == ("carry_0_0",)
    assert manifest.segments[-1].carry == ()
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["thresholds"] == [None] * 4
    for key in ("precision", "num_classes", "opset", "ir_version", "target", "edgeexit_version"):
        assert key in doc
    assert result.report.ok and len(result.report.checks) == 8


def test_each_exit_matches_torch_at_another_batch(resnet_bundle):
    model, out, _ = resnet_bundle
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    exits = load_runner().run_every_exit(out, {"x": x.numpy()})
    with torch.no_grad():
        steps = run_exits(model, (x,))
    for (logits, score), step in zip(exits, steps):
        np.testing.assert_allclose(logits, step.logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(score, step.logits.softmax(-1).max(-1).values, atol=1e-5)


def test_uncalibrated_bundle_is_the_full_model(resnet_bundle):
    model, out, _ = resnet_bundle
    x = torch.rand(5, 1, 8, 8)
    logits, exit_index = load_runner().run_early_exit(out, {"x": x.numpy()})
    assert list(exit_index) == [3] * 5
    np.testing.assert_allclose(logits, model(x)[-1].detach().numpy(), atol=1e-4)


def test_monolithic_graph_has_every_exit(resnet_bundle, tmp_path):
    model, _, _ = resnet_bundle
    path = export_monolithic(model, torch.rand(2, 1, 8, 8), tmp_path / "whole.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == [f"logits_{i}" for i in range(4)] + [f"score_{i}" for i in range(4)]
    x = torch.rand(3, 1, 8, 8)
    outs = sess.run(None, {"x": x.numpy()})
    for got, want in zip(outs[:4], model(x)):
        np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4)


class _Pair(torch.nn.Module):
    def forward(self, image, depth):
        return torch.cat([image, depth], dim=1)


class _Star(torch.nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class _Clash(torch.nn.Module):
    def forward(self, logits_0, depth):
        return torch.cat([logits_0, depth], dim=1)


@pytest.mark.parametrize(
    ("stem", "given", "names"),
    [
        (_Pair(), None, ("image", "depth")),  # the model's own words
        (_Pair(), ("a", "b"), ("a", "b")),  # given names win
        (_Star(), None, ("input_0", "input_1")),  # *args: no names to read
        (_Clash(), None, ("input_0", "input_1")),  # a name the graphs use themselves
    ],
)
def test_inputs_take_the_first_segments_parameter_names(stem, given, names, tmp_path):
    from edgeexit.export.inputs import resolve_input_names

    model = edgeexit.MultiExit([stem], [torch.nn.Linear(6, 2)])
    x = (torch.rand(2, 3), torch.rand(2, 3))
    assert resolve_input_names(x, given, model) == names
    result = edgeexit.export(model, x, tmp_path / "b", input_names=given)
    assert tuple(s.name for s in result.manifest.inputs) == names


def test_a_checkpoint_keeps_the_models_input_names(tmp_path):
    model = edgeexit.MultiExit([_Pair()], [torch.nn.Linear(6, 2)])
    x = (torch.rand(2, 3), torch.rand(2, 3))
    edgeexit.save(model, tmp_path / "m.pt", example_inputs=x)
    assert edgeexit.load(tmp_path / "m.pt").input_names == ("image", "depth")


def test_torchs_own_modules_keep_x(resnet_bundle):
    from edgeexit.export.inputs import resolve_input_names

    seq = edgeexit.MultiExit([torch.nn.Sequential(torch.nn.Linear(3, 3))], [torch.nn.Linear(3, 2)])
    assert resolve_input_names((torch.rand(2, 3),), None, seq) == ("x",)  # not `input`
    assert resolve_input_names((torch.rand(2, 3),), None, None) == ("x",)
    assert resnet_bundle[2].manifest.inputs[0].name == "x"
