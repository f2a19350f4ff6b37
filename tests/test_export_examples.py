"""Every example model under every criterion: the bundle validates, and each exit run with
plain onnxruntime (following only the manifest) matches PyTorch at another batch size."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeexit
from edgeexit.criteria import CRITERIA as CRITERIA_NEEDS
from edgeexit.criteria import NAMES as CRITERIA
from edgeexit.errors import ModelContractError
from edgeexit.examples.models import EXAMPLE_MODELS, example_inputs
from edgeexit.export import run_exits
from edgeexit.export.scores import exit_score

torch.set_num_threads(1)
RUNNER = Path(__file__).parents[1] / "docs" / "examples" / "run_bundle.py"
GATED = {"digits_gated"}


def run_every_exit(bundle, feed):
    spec = importlib.util.spec_from_file_location("run_bundle", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_every_exit(bundle, feed)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", sorted(EXAMPLE_MODELS))
def test_example_exports_under_criterion(name, criterion, tmp_path):
    torch.manual_seed(0)
    model = EXAMPLE_MODELS[name]()
    names = ("input_ids", "attention_mask") if name == "tiny_bert" else None
    if CRITERIA_NEEDS[criterion].needs_gate and name not in GATED:
        with pytest.raises(ModelContractError, match="needs exits\\[0\\] to return"):
            edgeexit.export(model, example_inputs(name), tmp_path / "b", criterion=criterion)
        assert not (tmp_path / "b").exists()
        return
    result = edgeexit.export(
        model, example_inputs(name), tmp_path / "b", criterion=criterion, input_names=names
    )
    assert result.report.ok and result.manifest.criterion == criterion
    other = example_inputs(name, batch=5, seed=1)
    feed = {spec.name: x.numpy() for spec, x in zip(result.manifest.inputs, other)}
    with torch.no_grad():
        steps = run_exits(model, other)
    for (logits, score), step in zip(run_every_exit(tmp_path / "b", feed), steps):
        want = exit_score(criterion, step.logits, step.gate, step.carry_in[0], step.carry_out[0])
        np.testing.assert_allclose(logits, step.logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(score, want.numpy(), atol=1e-4)
        assert score.shape == (5,) and score.dtype == np.float32
