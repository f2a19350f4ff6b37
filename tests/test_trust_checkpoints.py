"""Hostile checkpoints through `edgeexit export`: what an attacker tries on the format.

Each case crafts one model file in a fresh copy of a small world (a factory checkpoint, a
programs checkpoint, a user's file, and a module with a top-level side effect on the Python
path) and exports it. Every case must end with exit code 1, one ``error:`` line, no
traceback, every file byte-identical, nothing added, no ``PWNED`` marker (what hostile code
would write) and the hostile module never imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
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
from typer.testing import CliRunner

from edgeexit.cli import app

HOSTILE = "edgeexit_test_hostile"  # a module on the path whose import writes PWNED
HOSTILE_CODE = "import pathlib\npathlib.Path('PWNED').write_text('imported')\nNet = object\n"
PWN = "__import__('os').makedirs('PWNED', exist_ok=True)"


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], object]  # writes bad.pt in the world
    message: str  # must appear in the error line
    more: tuple[str, ...] = ()  # more arguments for export


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from edgeexit import save
    from edgeexit.examples.models import digits_cnn

    world = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    save(digits_cnn(width=4), world / "factory.pt", example_inputs=torch.rand(2, 1, 8, 8))
    save(parts_model(), world / "programs.pt", example_inputs=torch.rand(2, 4))
    (world / "thesis.txt").write_bytes(b"abc")  # a user's file (short: from_file grows it)
    (world / "lib").mkdir()
    (world / "lib" / f"{HOSTILE}.py").write_text(HOSTILE_CODE)
    return world


@pytest.fixture
def world(pristine, tmp_path, monkeypatch):
    copy = tmp_path / "world"
    shutil.copytree(pristine, copy)
    monkeypatch.chdir(copy)
    monkeypatch.syspath_prepend(str(copy / "lib"))
    return copy


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
        if "__pycache__" not in p.parts
    }


# -- building bad files --------------------------------------------------------------------


def doc_edit(change: Callable[[dict], object], source: str = "programs.pt") -> Callable:
    def make(world: Path) -> None:
        doc = torch.load(world / source, weights_only=True)
        change(doc)
        torch.save(doc, world / "bad.pt")

    return make


def graph_edit(change: Callable[[dict], object], k: int = 0) -> Callable:
    """Change program ``k``'s graph document; a bytes result replaces it whole."""

    def apply(doc: dict) -> None:
        graph = graph_of(doc, k)
        result = change(graph)
        put_graph(doc, result if isinstance(result, bytes) else graph, k)

    return doc_edit(apply)


def with_node(op: str, args: list, kwargs: dict | None = None, output: bool = True) -> Callable:
    """Append a call to segment 0 (its result becomes the output)."""

    def change(graph: dict) -> None:
        graph["nodes"].append({"op": op, "args": args, "kwargs": kwargs or {}})
        if output:
            count = graph["inputs"] + len(graph["weights"]) + len(graph["nodes"])
            graph["outputs"] = [{"value": count - 1}]

    return graph_edit(change)


def squaring(times: int) -> Callable[[dict], None]:
    """Size arithmetic that squares 2**62 again and again: unbounded Python ints."""

    def change(graph: dict) -> None:
        first = graph["inputs"] + len(graph["weights"]) + len(graph["nodes"])
        graph["nodes"].append({"op": "operator.mul", "args": [2**62, 2**62], "kwargs": {}})
        for k in range(times):
            prev = {"value": first + k}
            graph["nodes"].append({"op": "operator.mul", "args": [prev, prev], "kwargs": {}})

    return change


def first_node(change: Callable[[dict], object]) -> Callable:
    return graph_edit(lambda g: change(g["nodes"][0]))


def factory(name: str) -> Callable:
    return doc_edit(lambda d: d.update(factory=name), source="factory.pt")


def legacy(attack: Callable[[list], None]) -> Callable:
    def make(world: Path) -> None:
        x = torch.rand(2, 4)
        parts = legacy_parts(parts_model(), x)
        attack(parts)
        doc = {"format": "edgeexit.checkpoint/1", "input_names": ["x"], "example_inputs": [x],
               "programs": parts}  # fmt: skip
        torch.save(doc, world / "bad.pt")

    return make


def setitem(key, value):
    return lambda d: d.__setitem__(key, value)


X = {"value": 0}  # segment 0's input
HUGE_VIEW = torch.zeros(1).expand(10**12)  # saved as one element's storage
THESIS = "thesis.txt"
NOT_RUN = "does not run on the checkpoint's example inputs"
NOT_CORE = "which is not a core ATen operator"

CASES = [
    # the format's fields: types, missing keys, sizes
    Case("both-kinds", doc_edit(setitem("factory", "os:system")), "both 'programs' and"),
    Case("examples-strings", doc_edit(setitem("example_inputs", ["x"])), "'example_inputs'"),
    Case("names-ints", doc_edit(setitem("input_names", [1])), "'input_names' must be"),
    Case(
        "graph-empty",
        doc_edit(lambda d: d["programs"][0].update(graph=torch.zeros(0, dtype=torch.uint8))),
        "is not a JSON program",
    ),
    Case(
        "graph-expanded",  # 1 stored byte claiming 10**12: reading it would allocate 1 TB
        doc_edit(
            lambda d: d["programs"][0].update(
                graph=torch.zeros(1, dtype=torch.uint8).expand(10**12)
            )
        ),
        "1-D uint8 tensor",
    ),
    Case(
        "weight-expanded",
        doc_edit(lambda d: d["programs"][0]["tensors"].update({"0.weight": HUGE_VIEW})),
        "'tensors' must map names to (dense, CPU) tensors",
    ),
    Case("examples-expanded", doc_edit(setitem("example_inputs", [HUGE_VIEW])), "(dense, CPU)"),
    Case(
        "state-expanded",
        doc_edit(lambda d: d["state_dict"].update(w=HUGE_VIEW), source="factory.pt"),
        "'state_dict' must map names to (dense, CPU) tensors",
    ),
    Case("programs-not-list", doc_edit(setitem("programs", {"a": 1})), "'programs' must be"),
    Case("programs-empty", doc_edit(setitem("programs", [])), "'programs' must be"),
    Case("programs-odd", doc_edit(lambda d: d["programs"].pop()), "in pairs"),
    Case("part-not-dict", doc_edit(lambda d: d["programs"].__setitem__(0, [1])), "exactly"),
    Case("part-no-tensors", doc_edit(lambda d: d["programs"][0].pop("tensors")), "exactly"),
    Case("part-extra-key", doc_edit(lambda d: d["programs"][0].update(code="x")), "exactly"),
    Case(
        "graph-float",
        doc_edit(lambda d: d["programs"][0].update(graph=torch.zeros(3))),
        "1-D uint8 tensor",
    ),
    Case(
        "graph-2d",
        doc_edit(lambda d: d["programs"][0].update(graph=torch.zeros(2, 2, dtype=torch.uint8))),
        "1-D uint8 tensor",
    ),
    Case(
        "tensors-not-tensors",
        doc_edit(lambda d: d["programs"][0]["tensors"].update({"w": [1.0]})),
        "'tensors' must map names to",
    ),
    Case("graph-not-utf8", graph_edit(lambda g: b"\xff\xfe{}"), "is not a JSON program"),
    Case("graph-not-json", graph_edit(lambda g: b"{'format': 1"), "is not a JSON program"),
    Case("graph-nan", graph_edit(lambda g: b'{"inputs": NaN}'), "is not a JSON program"),
    Case("graph-deep", graph_edit(lambda g: b"[" * 100000), "is not a JSON program"),
    Case("graph-list", graph_edit(lambda g: b"[1, 2]"), "edgeexit.program/1 document"),
    Case("format-wrong", graph_edit(setitem("format", "other/1")), "edgeexit.program/1"),
    Case("key-missing", graph_edit(lambda g: g.pop("tuple")), "exactly the keys"),
    Case("key-extra", graph_edit(setitem("guards_code", [PWN])), "exactly the keys"),
    Case("inputs-zero", graph_edit(setitem("inputs", 0)), "'inputs' must be an int"),
    Case("inputs-huge", graph_edit(setitem("inputs", 10**12)), "'inputs' must be an int"),
    Case("inputs-bool", graph_edit(setitem("inputs", True)), "'inputs' must be an int"),
    Case("inputs-string", graph_edit(setitem("inputs", "1")), "'inputs' must be an int"),
    Case("inputs-more", graph_edit(setitem("inputs", 2)), NOT_RUN),
    Case("weights-not-list", graph_edit(setitem("weights", "w")), "'weights' must be a list"),
    Case("weights-missing", graph_edit(lambda g: g["weights"].pop()), "each of the program's"),
    Case(
        "weights-twice",
        graph_edit(lambda g: g["weights"].append(g["weights"][0])),
        "each of the program's",
    ),
    Case(
        "weights-code",
        graph_edit(lambda g: g["weights"].__setitem__(0, f'x") or {PWN} or ("')),
        "each of the program's",
    ),
    Case("nodes-not-list", graph_edit(setitem("nodes", {})), "'nodes' must be a list"),
    Case("node-not-dict", graph_edit(lambda g: g["nodes"].append(3)), "'nodes' must be a list"),
    Case("node-no-kwargs", first_node(lambda n: n.pop("kwargs")), "exactly 'op', 'args'"),
    Case("node-extra", first_node(lambda n: n.update(meta={})), "exactly 'op', 'args'"),
    Case("node-args-dict", first_node(lambda n: n.update(args={})), "'args' that are not"),
    Case("node-op-int", first_node(lambda n: n.update(op=5)), "not an operator name"),
    Case("node-op-long", first_node(lambda n: n.update(op="a" * 5000)), "not an operator name"),
    Case("outputs-empty", graph_edit(setitem("outputs", [])), "'outputs' must be a non-empty"),
    Case("outputs-int", graph_edit(setitem("outputs", [3])), "'outputs' must be values"),
    Case("tuple-string", graph_edit(setitem("tuple", "no")), "'tuple' must be"),
    Case("tuple-two-outputs", graph_edit(setitem("outputs", [X, X])), "'tuple' must be"),
    # values and literal arguments
    Case("value-later", with_node("aten.relu.default", [{"value": 99}]), "not one defined"),
    Case("value-negative", with_node("aten.relu.default", [{"value": -1}]), "not one defined"),
    Case("value-string", with_node("aten.relu.default", [{"value": "0"}]), "not one defined"),
    Case("value-self", first_node(lambda n: n["args"].__setitem__(0, {"value": 3})), "defined"),
    Case("int-huge", with_node("aten.add.Scalar", [X, 2**70]), "beyond int64"),
    Case("int-digits", graph_edit(lambda g: b'{"a": ' + b"9" * 5000 + b"}"), "not a JSON"),
    Case("string-long", with_node("aten.gelu.default", [X], {"approximate": "x" * 2000}), "1024"),
    Case("list-deep", with_node("aten.view.default", [X, [[[[[4]]]]]]), "more than 4 deep"),
    Case("tag-unknown", with_node("aten.relu.default", [{"pickle": "cos\nsystem"}]), "read"),
    Case("tag-two-keys", with_node("aten.relu.default", [{"value": 0, "x": 1}]), "not one"),
    Case(
        "dtype-object",
        with_node("aten._to_copy.default", [X], {"dtype": {"dtype": "obj"}}),
        "cannot read",
    ),  # fmt: skip
    Case(
        "device-code",
        with_node("aten._to_copy.default", [X], {"device": {"device": PWN}}),
        "cannot read",
    ),  # fmt: skip
    Case("float-word", with_node("aten.add.Scalar", [X, {"float": "1e999"}]), "cannot read"),
    Case("args-too-many", with_node("aten.relu.default", [X, 1, 2, 3]), "does not take"),
    Case("kwarg-unknown", with_node("aten.relu.default", [X], {"colour": 1}), "does not take"),
    Case(
        "kwarg-code",  # a keyword fx would paste into the Python source it generates
        with_node("aten.gelu.default", [X], {f"approximate='none'); {PWN}; (x": "none"}),
        "does not take",
    ),
    Case(
        "string-code",  # a string argument: fx writes its repr, the operator refuses it
        with_node("aten.gelu.default", [X], {"approximate": f'"); {PWN}; ("'}),
        NOT_RUN,
    ),
    Case("arg-wrong-type", with_node("aten.relu.default", ["x"]), NOT_RUN),
    Case("size-mul-chain", graph_edit(squaring(3)), NOT_RUN),  # 2**62 squared, squared...
    Case("size-pow", with_node("operator.pow", [10, 10**18], output=False), NOT_RUN),
    Case("size-round", with_node("builtins.round", [5, -(10**18)], output=False), NOT_RUN),
    Case("size-repeat-list", with_node("operator.mul", [[0], 2**40], output=False), NOT_RUN),
    Case("size-repeat-string", with_node("operator.mul", ["ab", 2**40], output=False), NOT_RUN),
    Case("size-getitem-string", with_node("operator.getitem", ["abc", 0]), NOT_RUN),
    Case("size-kwargs", with_node("operator.mul", [1, 2], {"x": 1}), "does not take"),
    # operators that are not pure tensor computations, or not operators at all
    Case("from-file", with_node("aten.from_file.default", [THESIS, True, 4]), NOT_CORE),
    Case("from-file-abs", with_node("aten.from_file.default", ["/etc/passwd", False, 4]), NOT_CORE),
    Case("set-storage", with_node("aten.set_.source_Storage", [X, X]), NOT_CORE),
    Case("copy-in-place", with_node("aten.copy_.default", [X, X]), NOT_CORE),
    Case("fill-in-place", with_node("aten.fill_.Scalar", [X, 0]), NOT_CORE),
    Case("resize", with_node("aten.resize_.default", [X, [10**9]]), "in place"),
    Case("empty", with_node("aten.empty.memory_format", [[4]]), "uninitialized memory"),
    Case("as-strided", with_node("aten.as_strided.default", [X, [4], [1], 10**6]), "offset"),
    Case("item", with_node("aten._local_scalar_dense.default", [X]), "Python number"),
    Case("rand", with_node("aten.rand.default", [[4]]), "random generator"),
    Case("print", with_node("builtins.print", [X]), NOT_CORE),
    Case("eval", with_node("builtins.eval", [PWN]), NOT_CORE),
    Case("exec", with_node("builtins.exec", [PWN]), NOT_CORE),
    Case("import", with_node("builtins.__import__", ["os"]), NOT_CORE),
    Case("getattr", with_node("builtins.getattr", [X, "__class__"]), NOT_CORE),
    Case("attrgetter", with_node("operator.attrgetter", ["__class__"]), NOT_CORE),
    Case("os-system", with_node("os.system", ["touch PWNED"]), NOT_CORE),
    Case("torch-hub", with_node("torch.hub.load", ["evil/repo", "m"]), NOT_CORE),
    Case("torch-ops-path", with_node("torch.ops.aten.relu.default", [X]), NOT_CORE),
    Case("hostile-module", with_node(f"{HOSTILE}.Net", [X]), NOT_CORE),
    Case("hostile-namespace", with_node(f"{HOSTILE}.relu.default", [X]), NOT_CORE),
    Case("prims", with_node("prims.add.default", [X, X]), NOT_CORE),
    Case("quantized", with_node("quantized.add.default", [X, X]), NOT_CORE),
    Case("aten-dunder", with_node("aten.__and__.Tensor", [X, X]), NOT_CORE),
    Case("aten-overload-dunder", with_node("aten.relu.__call__", [X]), NOT_CORE),
    Case("aten-unknown", with_node("aten.no_such_op.default", [X]), "not an operator of"),
    Case("aten-not-core", with_node("aten.linear.default", [X, X]), NOT_CORE),
    # programs in the format an earlier edgeexit wrote (torch.export's, which ran code)
    Case("legacy-size-code", legacy(lambda p: legacy_with_size_code(p, PWN)), "re-save"),
    Case("legacy-from-file", legacy(lambda p: legacy_with_from_file(p, THESIS)), "re-save"),
    # factories: nothing the file names is imported or called
    Case("factory-hostile", factory(f"{HOSTILE}:Net"), "imports no module a model file"),
    Case("factory-this", factory("this:nothing"), "imports no module a model file names"),
    Case("factory-antigravity", factory("antigravity:x"), "imports no module a model file"),
    Case("factory-main", factory("edgeexit.__main__:main"), "not 'package.module:function'"),
    Case("factory-dunder", factory("os:__class__"), "not 'package.module:function'"),
    Case("factory-relative", factory(".models:build"), "not 'package.module:function'"),
    Case("factory-code", factory(f"os:system({PWN})"), "not 'package.module:function'"),
    Case("factory-long", factory("a" * 100000 + ":b"), "not 'package.module:function'"),
    Case("factory-via-module", factory("edgeexit.examples.models:torch.load"), "will not call it"),
    Case(
        "factory-named-not-model",
        factory(f"{HOSTILE}:Net"),
        "will not call it",
        ("--factory", "os:getcwd"),
    ),
    Case(
        "factory-for-programs",
        doc_edit(lambda d: None),
        "takes no --factory",
        ("--factory", "edgeexit.examples.models:digits_cnn"),
    ),
]


def test_the_cases_are_distinct():
    assert len({c.id for c in CASES}) == len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_hostile_checkpoint_is_one_line_and_runs_nothing(case, world):
    case.make(world)
    before = snapshot(world)
    result = CliRunner().invoke(app, ["export", "bad.pt", "-o", "out", *case.more])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.stderr, result.stdout)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(world) == before  # the user's file too: byte-identical
    assert not (world / "PWNED").exists()
    assert HOSTILE not in sys.modules and "this" not in sys.modules
    assert "antigravity" not in sys.modules and "edgeexit.__main__" not in sys.modules


def test_a_factory_the_user_names_is_used_and_the_files_is_not_imported(world):
    factory(f"{HOSTILE}:Net")(world)
    args = ["export", "bad.pt", "-o", "out", "--factory", "edgeexit.examples.models:digits_cnn"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert (world / "out" / "manifest.json").is_file()
    assert HOSTILE not in sys.modules and not (world / "PWNED").exists()


@pytest.mark.parametrize("value", ["nocolon", ":build", "pkg:", "a:b:c"])
def test_a_malformed_factory_option_is_a_usage_error(world, value):
    result = CliRunner().invoke(app, ["export", "factory.pt", "-o", "out", "--factory", value])
    assert result.exit_code == 2 and "MODULE:FUNCTION" in result.stderr


@pytest.mark.slow
def test_no_hostile_module_on_the_path_is_imported_by_another_process(world):
    """The same in a fresh process, where nothing but edgeexit's startup is imported, with
    the hostile module importable from the working directory and from PYTHONPATH."""
    import edgeexit

    factory(f"{HOSTILE}:Net")(world)
    shutil.copy(world / "lib" / f"{HOSTILE}.py", world / f"{HOSTILE}.py")  # on sys.path[0]
    package = str(Path(edgeexit.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(world / "lib"), package])}
    before = snapshot(world)
    done = subprocess.run(
        [sys.executable, "-m", "edgeexit", "export", "bad.pt", "-o", "out"],
        cwd=world, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and "imports no module a model file names" in done.stderr
    assert "--factory" in done.stderr and "--trust-pickle" in done.stderr
    assert not (world / "PWNED").exists() and snapshot(world) == before
