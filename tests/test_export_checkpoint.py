"""Checkpoints: saved without pickled code, rebuilt from an importable factory; pickled
modules only when trusted."""

import pytest
import torch
from torch import nn

from edgeexit import load, save
from edgeexit.errors import CheckpointError
from edgeexit.examples.models import digits_resnet, tiny_bert
from edgeexit.export.checkpoint import FORMAT

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


def test_model_without_factory_says_how(tmp_path):
    from edgeexit import MultiExit

    model = MultiExit([nn.Linear(4, 4)], [nn.Linear(4, 2)])
    with pytest.raises(CheckpointError, match="factory='package.module:function'"):
        save(model, tmp_path / "m.pt", example_inputs=torch.rand(2, 4))
    assert not (tmp_path / "m.pt").exists()


def test_pickled_module_needs_trust(tmp_path):
    model = digits_resnet(width=4)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
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
