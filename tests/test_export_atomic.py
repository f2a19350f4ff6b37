"""A failed export leaves the output directory exactly as it was."""

import pytest
import torch
from torch import nn

import edgeexit
from edgeexit.bundle import read_manifest
from edgeexit.errors import InputError, ValidationError

torch.set_num_threads(1)


class BatchDependent(nn.Module):
    def forward(self, x):  # traced at batch 2, so the export is wrong at batch 5
        return x * 2 if x.shape[0] > 2 else x


def test_failed_validation_keeps_the_previous_bundle(tmp_path):
    out = tmp_path / "bundle"
    good = edgeexit.MultiExit([nn.Linear(4, 4)] * 2, [nn.Linear(4, 3), nn.Linear(4, 3)])
    edgeexit.export(good, torch.rand(2, 4), out, criterion="margin")
    before = (out / "manifest.json").read_text()
    bad = edgeexit.MultiExit([BatchDependent(), nn.Identity()], [nn.Linear(4, 3)] * 2)
    with pytest.raises(ValidationError, match="segment 0 at batch 5: logits_0") as info:
        edgeexit.export(bad, torch.rand(2, 4), out)
    assert not info.value.report.ok
    assert (out / "manifest.json").read_text() == before
    assert read_manifest(out).criterion == "margin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_inputs_that_do_not_fit_write_nothing(tmp_path):
    model = edgeexit.MultiExit([nn.Linear(4, 4)], [nn.Linear(4, 3)])
    with pytest.raises(InputError, match=r"inputs of shape \(2, 5\) do not fit the model"):
        edgeexit.export(model, torch.rand(2, 5), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []
