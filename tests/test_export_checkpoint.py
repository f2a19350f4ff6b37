"""Checkpoints: saved without pickled code, rebuilt from an importable factory; pickled
modules only when trusted."""

import os
from pathlib import Path

import pytest
import torch
from fixtures.programs import (
    graph_of,
    legacy_parts,
    legacy_with_from_file,
    legacy_with_size_code,
    parts_model,
    put_graph,
)
from torch import nn

from edgeexit import load, save
from edgeexit.errors import CheckpointError
from edgeexit.examples.models import digits_resnet, tiny_bert
from edgeexit.export.checkpoint import FORMAT
from edgeexit.export.program_graph import ProgramError, operator_named
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
    save(parts_model(), tmp_path / "m.pt", example_inputs=torch.rand(2, 4))
    doc = torch.load(tmp_path / "m.pt", weights_only=True)
    graph = graph_of(doc)
    assert "aten.relu.default" in [node["op"] for node in graph["nodes"]]
    for node in graph["nodes"]:
        if node["op"] == "aten.relu.default":
            node["op"] = "torch.hub.load"
    put_graph(doc, graph)
    torch.save(doc, tmp_path / "hostile.pt")
    with pytest.raises(CheckpointError, match="segment 0 is not a program edgeexit will run.*"
                       "'torch.hub.load', which is not a core ATen operator"):  # fmt: skip
        load(tmp_path / "hostile.pt")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("aten.from_file.default", "not a core ATen operator"),  # reads and writes a file
        ("aten.set_.source_Storage", "not a core ATen operator"),
        ("aten.empty.memory_format", "returns uninitialized memory"),
        ("aten.as_strided.default", "views a storage at any offset"),
        ("aten._local_scalar_dense.default", "turns tensor data into a Python number"),
        ("aten.rand.default", "random generator"),
        ("aten._native_batch_norm_legit.default", "changes its arguments in place"),
        ("aten.no_such_op.default", "not an operator of this torch"),
        ("prims.add.default", "not a core ATen operator"),
        ("torch.ops.aten.relu.default", "not a core ATen operator"),
        ("builtins.print", "not a core ATen operator"),
        ("builtins.eval", "not a core ATen operator"),
        ("builtins.getattr", "not a core ATen operator"),
        ("operator.attrgetter", "not a core ATen operator"),
        ("aten.relu.__call__", "not a core ATen operator"),
        ("aten.__and__.Tensor", "not a core ATen operator"),
        ("os.system", "not a core ATen operator"),
    ],
)
def test_the_operator_allowlist_refuses_what_is_not_a_pure_tensor_operator(name, reason):
    with pytest.raises(ProgramError, match=reason):
        operator_named(name)


def test_the_operator_allowlist_takes_core_aten_and_the_verifiers_size_arithmetic():
    from torch._export.verifier import Verifier

    assert operator_named("aten.relu.default") is torch.ops.aten.relu.default
    assert operator_named("aten.sym_size.int") is torch.ops.aten.sym_size.int
    for fn in Verifier().allowed_builtin_ops():  # what torch.export writes on sizes
        module = {"_operator": "operator"}.get(fn.__module__, fn.__module__)
        assert operator_named(f"{module}.{fn.__name__}").__name__ == f"sized_{fn.__name__}"
    assert operator_named("operator.mul")(3, 4) == 12
    assert operator_named("operator.floordiv")(7, 2) == 3
    assert operator_named("torch.sym_max")(3, 4) == 4
    with pytest.raises(OverflowError, match="beyond int64"):
        operator_named("operator.mul")(2**63, 2)
    with pytest.raises(OverflowError, match="by 1000"):
        operator_named("operator.pow")(2, 1000)
    with pytest.raises(TypeError, match="on a str"):  # (a string or a list repeated 2**31
        operator_named("operator.mul")("a", 3)  # times would take gigabytes)
    with pytest.raises(TypeError, match="on a list"):
        operator_named("operator.mul")([0], 3)
    with pytest.raises(TypeError, match="an element of an operator's results"):
        operator_named("operator.getitem")("abc", 0)
    assert operator_named("operator.getitem")((5, 6), 1) == 6
    assert operator_named("torch.sym_sum")([1, 2, 3]) == 6


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.mean(dim=1))


def test_attention_with_a_dynamic_batch_saves_and_loads_as_programs(tmp_path):
    """torch.export writes size arithmetic (operator.mul on the batch) into such graphs."""
    from edgeexit import MultiExit

    torch.manual_seed(0)
    model = MultiExit([Attention(), Attention()], [Pool(), Pool()]).eval()
    save(model, tmp_path / "m.pt", example_inputs=torch.rand(4, 5, 8))
    ops = {node["op"] for node in graph_of(torch.load(tmp_path / "m.pt"))["nodes"]}
    assert "operator.mul" in ops
    x = torch.rand(7, 5, 8)  # another batch size than the example's
    with torch.no_grad():
        for ours, theirs in zip(load(tmp_path / "m.pt").model(x), model(x)):
            torch.testing.assert_close(ours, theirs)


class Noisy(nn.Module):
    def forward(self, x):
        return x + torch.rand(x.shape[1:])  # the process's random generator


class Scalar(nn.Module):
    def forward(self, x):
        return x * x.sum().item()  # a tensor's value turned into a Python number


@pytest.mark.parametrize(
    ("segment", "message"),
    [(Noisy(), "aten.rand.default"), (Scalar(), "aten._local_scalar_dense.default")],
)
def test_save_refuses_a_program_load_would_refuse(tmp_path, segment, message):
    from edgeexit import MultiExit

    model = MultiExit([segment], [nn.Linear(4, 2)])
    with pytest.raises(CheckpointError, match=message):
        save(model, tmp_path / "m.pt", example_inputs=torch.rand(2, 4))
    assert not (tmp_path / "m.pt").exists()


def test_save_refuses_factory_arguments_a_weights_only_load_refuses(tmp_path):
    model = digits_resnet(width=4)
    with pytest.raises(CheckpointError, match="load would refuse.*holds pickled code"):
        save(model, tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8),
             factory="edgeexit.examples.models:digits_resnet",
             factory_kwargs={"width": 4, "activation": nn.ReLU()})  # fmt: skip
    assert not (tmp_path / "m.pt").exists()


def test_a_size_expression_in_an_earlier_checkpoint_is_never_evaluated(tmp_path):
    """torch's deserializer hands each symbolic size to sympy.sympify, which runs Python;
    files in that format are refused before any of it is read."""
    x, marker = torch.rand(2, 4), tmp_path / "PWNED"
    parts = legacy_parts(parts_model(), x)
    legacy_with_size_code(parts, f"__import__('os').makedirs({str(marker)!r}, exist_ok=True)")
    doc = {"format": FORMAT, "input_names": ["x"], "example_inputs": [x], "programs": parts}
    torch.save(doc, tmp_path / "evil.pt")
    assert torch.load(tmp_path / "evil.pt", weights_only=True)  # a weights-only file
    with pytest.raises(CheckpointError, match="torch.export's own format.*re-save"):
        load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_an_aten_call_on_a_users_file_in_an_earlier_checkpoint_never_runs(tmp_path):
    x, victim = torch.rand(2, 4), tmp_path / "thesis.txt"
    victim.write_bytes(b"abc")  # short: from_file(shared=True) extends it and writes zeros
    parts = legacy_parts(parts_model(), x)
    legacy_with_from_file(parts, str(victim))
    doc = {"format": FORMAT, "input_names": ["x"], "example_inputs": [x], "programs": parts}
    torch.save(doc, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="torch.export's own format"):
        load(tmp_path / "evil.pt").model(x)  # (before: refused only once it had run)
    assert victim.read_bytes() == b"abc"


def package_only_env() -> dict[str, str]:
    """The environment for another process that finds this edgeexit and nothing of the
    test's (not the script's folder, not the tests)."""
    import edgeexit

    return {**os.environ, "PYTHONPATH": str(Path(edgeexit.__file__).resolve().parents[1])}


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

    env = package_only_env()
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


ATTENTION_SCRIPT = """
import numpy as np, torch
from torch import nn
import edgeexit

class Block(nn.Module):  # defined in a script: saved as programs, no factory
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
    def forward(self, x):
        return self.norm(x + self.attention(x, x, x, need_weights=False)[0])

class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 5)
    def forward(self, x):
        return self.fc(x.mean(dim=1))

torch.manual_seed(0)
model = edgeexit.MultiExit([Block(), Block()], [Head(), Head()]).eval()
edgeexit.save(model, "model.pt", example_inputs=torch.rand(4, 6, 16))
x = torch.rand(9, 6, 16)
with torch.no_grad():
    np.savez("expected.npz", x=x.numpy(), logits=torch.stack(model(x)).numpy())
"""


@pytest.mark.slow
def test_attention_saved_without_a_factory_exports_from_another_process(tmp_path):
    """The case the size-arithmetic check used to refuse: `segment 0 calls <built-in
    function mul>`; now exported by the CLI in a fresh process, with the model's answers."""
    import subprocess
    import sys

    import numpy as np

    from edgeexit.runtime import Runtime

    env = package_only_env()
    (tmp_path / "train.py").write_text(ATTENTION_SCRIPT)
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, check=True, timeout=300)
    done = subprocess.run(
        [sys.executable, "-m", "edgeexit", "-q", "export", "model.pt", "-o", "b"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = np.load(tmp_path / "expected.npz")
    got = Runtime(tmp_path / "b").run_all_exits(expected["x"]).logits
    np.testing.assert_allclose(got, expected["logits"], atol=1e-4)


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
