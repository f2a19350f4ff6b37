"""Checkpoints: saved without pickled code, rebuilt from an importable factory; pickled
modules only when trusted."""

import os

import pytest
import torch
from torch import nn

from edgeexit import load, save
from edgeexit.errors import CheckpointError
from edgeexit.examples.models import digits_resnet, tiny_bert
from edgeexit.export.checkpoint import FORMAT
from edgeexit.export.train import run_exits

torch.set_num_threads(1)


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = digits_resnet(width=8).eval()
    x = torch.rand(3, 1, 8, 8)
    path = save(model, tmp_path / "m.pt", example_inputs=x)
    doc = torch.load(path, weights_only=True)  # no pickled code inside
    assert doc["format"] == FORMAT
    assert doc["factory"] == "edgeexit.examples.models:digits_resnet"
    assert doc["factory_kwargs"] == {"width": 8}
    ckpt = load(path)
    assert ckpt.input_names == ("x",)
    torch.testing.assert_close(ckpt.example_inputs[0], x)
    for a, b in zip(ckpt.model(x), model(x)):
        torch.testing.assert_close(a, b)


def test_two_named_inputs_are_kept(tmp_path):
    model = tiny_bert(layers=2)
    ids, mask = torch.ones(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64)
    save(model, tmp_path / "b.pt", example_inputs=(ids, mask), input_names=["ids", "mask"])
    ckpt = load(tmp_path / "b.pt")
    assert ckpt.input_names == ("ids", "mask")
    assert [x.dtype for x in ckpt.example_inputs] == [torch.int64, torch.int64]


def test_a_model_from_parts_is_saved_as_programs(tmp_path):
    from edgeexit import MultiExit

    torch.manual_seed(0)
    model = MultiExit([nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 8)],
                      [nn.Linear(8, 3), nn.Linear(8, 3)])  # fmt: skip
    x = torch.rand(5, 4)
    save(model, tmp_path / "m.pt", example_inputs=x[:1])  # one row: captured batch-dynamic
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    assert "programs" in doc and "factory" not in doc and len(doc["programs"]) == 4
    loaded = load(tmp_path / "m.pt").model
    with torch.no_grad():
        for ours, theirs in zip(run_exits(loaded, [x]), run_exits(model.eval(), [x])):
            torch.testing.assert_close(ours.logits, theirs.logits)


def test_a_model_that_does_not_capture_says_how(tmp_path):
    from edgeexit import MultiExit

    class Branchy(nn.Module):  # data-dependent control flow: torch.export cannot capture it
        def forward(self, x):
            return x if x.sum() > 0 else -x

    model = MultiExit([Branchy()], [nn.Linear(4, 2)])
    with pytest.raises(CheckpointError, match="factory='package.module:function'"):
        save(model, tmp_path / "m.pt", example_inputs=torch.rand(2, 4))
    assert not (tmp_path / "m.pt").exists()


def test_a_program_calling_more_than_tensor_operators_is_refused(tmp_path):
    from edgeexit import MultiExit

    model = MultiExit([nn.Sequential(nn.Linear(4, 4), nn.ReLU())], [nn.Linear(4, 2)])
    save(model, tmp_path / "m.pt", example_inputs=torch.rand(2, 4))
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    graph = bytes(doc["programs"][0]["graph"].numpy().tobytes())
    assert b"torch.ops.aten.relu.default" in graph
    hostile = graph.replace(b"torch.ops.aten.relu.default", b"torch.hub.load")
    doc["programs"][0]["graph"] = torch.frombuffer(bytearray(hostile), dtype=torch.uint8)
    torch.save(doc, tmp_path / "hostile.pt")
    # torch's own verifier refuses it, and edgeexit's check would too
    with pytest.raises(CheckpointError, match="segment 0 is not a program edgeexit will run"):
        load(tmp_path / "hostile.pt")


def test_the_operator_check_passes_only_tensor_operators(tmp_path):
    import operator

    from edgeexit.export.programs import _safe

    assert _safe(torch.ops.aten.relu.default) and _safe(operator.getitem)
    assert not _safe(torch.hub.load) and not _safe(print) and not _safe(operator.add)


SCRIPT = """
import sys, torch
from torch import nn
import edgeexit

class Head(nn.Module):
    def __init__(self, c, classes):
        super().__init__()
        self.fc = nn.Linear(c, classes)
    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))

class MyNet(nn.Module):  # defined in a script, its constructor takes arguments
    def __init__(self, width, classes=10):
        super().__init__()
        self.segments = nn.ModuleList([nn.Conv2d(1, width, 3, padding=1),
                                       nn.Conv2d(width, width, 3, padding=1)])
        self.exits = nn.ModuleList([Head(width, classes), Head(width, classes)])

torch.manual_seed(0)
edgeexit.save(MyNet(width=8), "model.pt", example_inputs=(torch.rand(4, 1, 8, 8),))
"""


@pytest.mark.slow
def test_a_class_defined_in_a_script_exports_from_another_process(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (tmp_path / "train.py").write_text(SCRIPT)
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, check=True, timeout=300)
    other = tmp_path / "elsewhere"
    other.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "edgeexit", "-q", "export", str(tmp_path / "model.pt"), "-o", "b"],
        cwd=other, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (other / "b" / "manifest.json").is_file()


def test_pickled_module_needs_trust(tmp_path):
    model = digits_resnet(width=4)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="`trust_pickle`"):
        load(tmp_path / "whole.pt")
    ckpt = load(tmp_path / "whole.pt", trust_pickle=True)
    assert ckpt.example_inputs is None and isinstance(ckpt.model, nn.Module)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save(digits_resnet(width=4).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="not an edgeexit checkpoint.*edgeexit.save"):
        load(tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.pt")
