"""Library messages name parameters as Python spells them; the CLI shows flags, from one
table (edgeexit.cli.core.FLAGS). Options given in old units keep working, with a warning."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgeexit.budget import Budget
from edgeexit.cli.core import FLAGS, in_flags
from edgeexit.errors import CalibrationError

PACKAGE = Path(__file__).parents[1] / "edgeexit"
FLAG = re.compile(r"(?<![\w'`-])--[a-z][a-z0-9-]+")
# Backquoted names in messages that are not parameters of a command: code, not options.
# a model's or result's attributes, or arguments Python alone takes
NOT_OPTIONS = {"exits", "segments", "outputs", "output_shape", "speculative", "sampling",
               "kv_heads", "qkv_bias", "sliding_window", "sliding_layers", "requests"}  # fmt: skip


def _library_strings() -> list[tuple[str, str]]:
    """(module, text) of every string literal outside the CLI and docstrings."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        parts = set()  # an f-string is read whole: its pieces say nothing alone
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                pieces = [v for v in node.values if isinstance(v, ast.Constant)]
                parts.update(id(v) for v in pieces)
                found.append((str(path.relative_to(PACKAGE)), "{}".join(v.value for v in pieces)))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if id(node) not in docstrings and id(node) not in parts:
                found.append((str(path.relative_to(PACKAGE)), node.value))
    return found


def test_the_library_names_parameters_not_flags():
    flagged = [(m, s) for m, s in _library_strings() if FLAG.search(s)]
    # what remains names a whole command line to run (`edgeexit bench --check`), or
    # says both spellings in a log line
    allowed = [s for _, s in flagged if "edgeexit " in s or "bench " in s or "(--" in s]
    assert len(flagged) == len(allowed), [f for f in flagged if f[1] not in allowed]


def test_every_parameter_a_message_names_has_a_flag():
    named = {n for _, s in _library_strings() for n in re.findall(r"`(\w+)`", s)}
    assert named - set(FLAGS) - NOT_OPTIONS == set()


def test_the_cli_shows_flags():
    with pytest.raises(CalibrationError) as err:
        Budget()
    assert "`max_accuracy_drop`" in str(err.value)
    assert "--max-accuracy-drop" in in_flags(str(err.value))
    assert in_flags("`unknown_thing` stays") == "`unknown_thing` stays"


def test_an_accuracy_drop_in_points_still_works_with_a_warning():
    pytest.importorskip("onnx")
    from edgeexit.compile import CompileOptions

    with pytest.warns(DeprecationWarning, match="max_quant_drop as a fraction"):
        options = CompileOptions(max_quant_drop_pp=2.0)
    assert options.max_quant_drop == pytest.approx(0.02)
    assert CompileOptions().max_quant_drop == 0.01
