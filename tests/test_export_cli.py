"""`edgeexit export` end to end: the four model shapes of the issue, and every bad input
ending in one line on stderr, exit code 1, no traceback and no bundle left behind."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeexit import MultiExit, save
from edgeexit.bundle import read_manifest
from edgeexit.cli import app
from edgeexit.errors import ExportError
from edgeexit.examples.models import (
    digits_cnn,
    digits_gated,
    digits_resnet,
    digits_two_scale,
    example_inputs,
    tiny_bert,
)
from edgeexit.export import run_exits
from edgeexit.export.checkpoint import checkpointable
from edgeexit.export.options import ExportOptions

torch.set_num_threads(1)
RUNNER = Path(__file__).parents[1] / "docs" / "examples" / "run_bundle.py"


class BatchDependent(nn.Module):
    """Takes a Python branch on the batch size: tracing bakes in one branch, so the export
    cannot match PyTorch at another batch size and validation must catch it."""

    def forward(self, x):
        return x * 2 if x.shape[0] > 2 else x


@checkpointable
def batch_dependent_model() -> MultiExit:
    return MultiExit([BatchDependent(), nn.Identity()], [nn.Linear(4, 3), nn.Linear(4, 3)])


class Mismatched(nn.Module):
    def __init__(self):
        super().__init__()
        self.segments = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.exits = nn.ModuleList([nn.Linear(4, 2)])


def run_every_exit(bundle, feed):
    spec = importlib.util.spec_from_file_location("run_bundle", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_every_exit(bundle, feed)


def invoke(*args):
    return CliRunner().invoke(app, ["export", *map(str, args)])


CASES = {
    "bert": (lambda: tiny_bert(layers=2), ("input_ids", "attention_mask"), "confidence"),
    "two_scale": (digits_two_scale, None, "entropy"),
    "gated": (digits_gated, None, "gate"),
    "cnn": (digits_cnn, None, "margin"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_exports_and_each_exit_matches_torch(case, tmp_path):
    build, names, criterion = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    key = "tiny_bert" if case == "bert" else "digits"
    save(model, tmp_path / "m.pt", example_inputs=example_inputs(key), input_names=names)
    result = invoke(tmp_path / "m.pt", "-o", tmp_path / "b", "--criterion", criterion)
    assert result.exit_code == 0, result.output
    assert "validation against PyTorch" in result.output
    manifest = read_manifest(tmp_path / "b")
    assert manifest.criterion == criterion
    other = example_inputs(key, batch=3, seed=2)
    feed = {spec.name: x.numpy() for spec, x in zip(manifest.inputs, other)}
    if names:
        assert list(feed) == list(names)
        assert [i.dtype for i in manifest.inputs] == ["int64", "int64"]
        assert len(manifest.segments[0].carry) == 2  # (hidden, mask)
    with torch.no_grad():
        steps = run_exits(model, other)
    for (logits, _), step in zip(run_every_exit(tmp_path / "b", feed), steps):
        np.testing.assert_allclose(logits, step.logits.numpy(), atol=1e-4)


def test_cli_json_target_and_patience(tmp_path):
    save(digits_cnn(width=4), tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8))
    result = invoke(
        tmp_path / "m.pt", "-o", tmp_path / "b", "-c", "patience", "--patience", "3",
        "--target", "x86-cpu", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "b")
    assert manifest.criterion_params == {"patience": 3}
    assert manifest.extra["target"] == "x86-cpu" and manifest.extra["opset"] <= 21
    assert '"format": "edgeexit.bundle/1"' in result.stdout


def test_cli_writes_bodies_unless_told_not_to(tmp_path):
    save(digits_cnn(width=4), tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8))
    assert invoke(tmp_path / "m.pt", "-o", tmp_path / "b").exit_code == 0
    assert [s.body is not None for s in read_manifest(tmp_path / "b").segments] == [
        True, True, False]  # fmt: skip
    bare = invoke(tmp_path / "m.pt", "-o", tmp_path / "bare", "--no-bodies")
    assert bare.exit_code == 0, bare.output
    assert all(s.body is None for s in read_manifest(tmp_path / "bare").segments)
    assert not list((tmp_path / "bare").glob("body_*"))
    assert not list((tmp_path / "bare").glob("prefix_*"))  # a prefix joins bodies


def test_cli_writes_prefix_graphs_up_to_max_prefix(tmp_path):
    save(digits_resnet(width=4), tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8))
    for k, want in ((3, [False, True, True, False]), (1, [False, True, False, False]),
                    (0, [False] * 4)):  # fmt: skip
        result = invoke(tmp_path / "m.pt", "-o", tmp_path / f"b{k}", "--max-prefix", str(k))
        assert result.exit_code == 0, result.output
        segments = read_manifest(tmp_path / f"b{k}").segments
        assert [s.prefix is not None for s in segments] == want
        assert segments[-1].plain is not None  # the plain graph whatever the cap
    bad = invoke(tmp_path / "m.pt", "-o", tmp_path / "bad", "--max-prefix", "-1")
    assert bad.exit_code == 2 and "--max-prefix" in bad.output
    with pytest.raises(ExportError, match="`max_prefix` is -1; expected a whole number"):
        ExportOptions(max_prefix=-1)


def test_trusted_pickle_with_input_shape(tmp_path):
    torch.save(digits_cnn(width=4), tmp_path / "whole.pt")
    result = invoke(
        tmp_path / "whole.pt", "-o", tmp_path / "b", "--trust-pickle", "--input-shape", "1x8x8"
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "b").inputs[0].shape == ("batch", 1, 8, 8)


def bad_inputs(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    torch.save(nn.Linear(4, 2), tmp_path / "linear.pt")
    torch.save(Mismatched(), tmp_path / "mismatched.pt")
    save(digits_cnn(width=4), tmp_path / "cnn.pt", example_inputs=torch.rand(2, 1, 8, 8))
    save(batch_dependent_model(), tmp_path / "batchdep.pt", example_inputs=torch.rand(2, 4))
    trusted = ("--trust-pickle", "--input-shape", "4")
    return {
        "missing file": (("nope.pt",), "does not exist"),
        "not a checkpoint": (("junk.pt",), "is not a PyTorch checkpoint"),
        "untrusted pickle": (("linear.pt",), "--trust-pickle"),
        "no segments": (("linear.pt", *trusted), "has no `segments`"),
        "length mismatch": (("mismatched.pt", *trusted), "2 segments but 1 exits"),
        "shape does not fit": (("cnn.pt", "--input-shape", "3x9x9"), "do not fit the model"),
        "malformed shape": (("cnn.pt", "--input-shape", "1xAx8"), "is malformed", 2),
        "gate without gates": (("cnn.pt", "-c", "gate"), "criterion 'gate' needs"),
        "unknown target": (("cnn.pt", "--target", "toaster"), "'toaster' is not a target", 2),
        "fails validation": (("batchdep.pt",), "does not match PyTorch within atol"),
    }


def test_bad_inputs_end_in_one_line(tmp_path):
    for what, (args, message, *code) in bad_inputs(tmp_path).items():
        out = tmp_path / "out" / "bundle"
        result = invoke(tmp_path / args[0], "-o", out, *args[1:])
        assert result.exit_code == (code[0] if code else 1), (what, result.output)
        lines = [line for line in result.stderr.strip().splitlines() if line]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, (what, result.stderr)  # --trust-pickle adds a warning line
        assert all(line.startswith(("error: ", "warning: ")) for line in lines), what
        assert message in errors[0], (what, errors[0])
        assert "Traceback" not in result.output, what
        assert not out.exists(), what
        assert not list(out.parent.glob(".*")), (what, list(out.parent.glob(".*")))


def test_trusted_pickle_with_two_named_int_inputs(tmp_path):
    torch.save(tiny_bert(layers=2), tmp_path / "bert.pt")
    shapes = ("--input-shape", "input_ids=16:int64", "--input-shape", "attention_mask=16:int64")
    result = invoke(tmp_path / "bert.pt", "-o", tmp_path / "b", "--trust-pickle", *shapes)
    assert result.exit_code == 0, result.output
    inputs = read_manifest(tmp_path / "b").inputs
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [
        ("input_ids", "int64", ("batch", 16)),
        ("attention_mask", "int64", ("batch", 16)),
    ]
