"""The multi-exit model contract: MultiExit, and the errors for models that do not fit."""

import pytest
import torch
from torch import nn

from edgeexit import MultiExit
from edgeexit.errors import ModelContractError
from edgeexit.export.model import check_contract, run_exits

torch.set_num_threads(1)


def linear_exits(n=2):
    return [nn.Linear(4, 4) for _ in range(n)], [nn.Linear(4, 3) for _ in range(n)]


def test_multi_exit_runs_every_exit():
    segments, exits = linear_exits(3)
    model = MultiExit(segments=segments, exits=exits)
    out = model(torch.randn(5, 4))
    assert [tuple(z.shape) for z in out] == [(5, 3)] * 3
    assert check_contract(model) == 3


def test_lengths_must_match():
    segments, exits = linear_exits(2)
    with pytest.raises(ModelContractError, match="2 segments but 1 exits"):
        MultiExit(segments, exits[:1])


def test_module_without_segments_is_refused():
    with pytest.raises(ModelContractError, match="has no `segments`.*ModuleList"):
        check_contract(nn.Linear(2, 2))


def test_segments_must_be_a_module_list():
    model = nn.Module()
    model.segments = nn.Sequential(nn.Linear(4, 4))
    model.exits = nn.ModuleList([nn.Linear(4, 3)])
    with pytest.raises(ModelContractError, match="segments is a Sequential"):
        check_contract(model)


def test_head_must_return_logits_or_logits_and_gate():
    model = MultiExit([nn.Linear(4, 4)], [nn.Identity()])
    with pytest.raises(ModelContractError, match=r"exits\[0\] returned \(2, 3, 4\)"):
        run_exits(model, (torch.randn(2, 3, 4),))


def test_gate_must_be_one_value_per_sample():
    class BadGate(nn.Module):
        def forward(self, x):
            return x, x

    model = MultiExit([nn.Linear(4, 4)], [BadGate()])
    with pytest.raises(ModelContractError, match=r"gate of \(2, 4\); expected a gate \[batch\]"):
        run_exits(model, (torch.randn(2, 4),))


def test_segment_must_return_tensors():
    class Dicty(nn.Module):
        def forward(self, x):
            return {"h": x}

    model = MultiExit([Dicty()], [nn.Linear(4, 3)])
    with pytest.raises(ModelContractError, match="expected a Tensor or a tuple of Tensors"):
        run_exits(model, (torch.randn(2, 4),))


def test_export_errors_name_the_cause_and_what_to_change(tmp_path):
    import torch
    from torch import nn

    import edgeexit
    from edgeexit.errors import ModelContractError, ValidationError

    class Two(nn.Module):
        def forward(self, x):
            return torch.relu(x), x * 2

    class UsesFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, a, b):
            return (self.fc(a),)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, a, *rest):
            return self.fc(a)

    class NoneInCarry(nn.Module):
        def forward(self, x):
            return x, None

    ignored = edgeexit.MultiExit([Two(), UsesFirst()], [Head(), Head()])
    with pytest.raises(ValidationError) as err:
        edgeexit.export(ignored, torch.rand(2, 4), tmp_path / "a")
    message = str(err.value)
    assert "segment 1 ignores its input 'carry_0_1' (carry element 1 from segment 0)" in message
    assert "stop returning it from segment 0" in message
    assert message.count("ignores its input") == 1  # once, not once per batch size checked
    holes = edgeexit.MultiExit([NoneInCarry(), UsesFirst()], [Head(), Head()])
    with pytest.raises(ModelContractError, match="element 1 is None.*mask helper"):
        edgeexit.export(holes, torch.rand(2, 4), tmp_path / "b")
