"""Every command: examples in --help, and exit codes 0 ok, 1 failure, 2 usage error."""

import pytest
from typer.testing import CliRunner

from edgeexit.cli import app

COMMANDS = ("export", "compile", "profile", "calibrate", "run", "bench", "targets", "demo",
            "inspect", "generate", "calibrate-generation", "split", "serve")  # fmt: skip

# A command line per command that parses but fails on its input: exit 1, one line, no traceback.
FAILING = {
    "export": ["export", "{tmp}/missing.pt", "-o", "{tmp}/bundle"],
    "compile": ["compile", "{tmp}/no-bundle", "-t", "rpi4", "-o", "{tmp}/out"],
    "profile": ["profile", "{tmp}/no-bundle"],
    "calibrate": [
        "calibrate",
        "{tmp}/no-bundle",
        "--data",
        "{tmp}/d.npz",
        "--max-accuracy-drop",
        "0.01",
    ],
    "run": ["run", "{tmp}/no-bundle", "--input", "{tmp}/x.npy"],
    "bench": ["bench", "{tmp}/no-bundle", "--data", "{tmp}/d.npz"],
    "targets": ["targets", "no-such-board"],
    "demo": ["demo", "--model", "{tmp}/m.pt", "--data", "{tmp}/d.npz"],
    "inspect": ["inspect", "{tmp}/no-bundle"],
    "generate": ["generate", "{tmp}/no-bundle", "--prompt", "hi"],
    "calibrate-generation": [
        "calibrate-generation",
        "{tmp}/no-bundle",
        "--prompts",
        "{tmp}/p.json",
    ],
    "split": ["split", "{tmp}/no-bundle", "--at", "0"],
    "serve": ["serve", "{tmp}/no-bundle"],
}


def invoke(args):
    return CliRunner().invoke(app, args)


def test_every_command_is_covered():
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert registered == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_examples_and_exits_0(name):
    result = invoke([name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples" in result.output and f"edgeexit {name}" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_unknown_option_is_a_usage_error_2(name):
    result = invoke([name, "--no-such-option"])
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("name", ["export", "compile", "profile", "calibrate", "run", "bench"])
def test_missing_argument_is_a_usage_error_2(name):
    assert invoke([name]).exit_code == 2


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_input_is_one_line_and_exit_1(name, tmp_path):
    args = [a.format(tmp=tmp_path) for a in FAILING[name]]
    result = invoke(args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output


def test_success_is_0():
    result = invoke(["targets", "--json"])
    assert result.exit_code == 0 and '"name": "x86-cpu"' in result.stdout


# Malformed option values, one per kind of coercion: each is one line in our words, exit 2.
MALFORMED = [
    (["run", "b", "--data", "d.npz", "--threads", "1.5"], "'1.5' is not an integer"),
    (["run", "b", "--data", "d.npz", "--threads", "-1"], "-1 is out of range; expected at least 0"),
    (["bench", "b", "--data", "d.npz", "-b", "x"], "'x' is not an integer"),
    (["export", "m.pt", "-o", "o", "--opset", "99"], "99 is out of range; expected at most 21"),
    (["export", "m.pt", "-o", "o", "-c", "foo"], "'foo' is not one of 'confidence', 'margin'"),
    (["profile", "b", "--min-seconds", "soon"], "'soon' is not a number"),
    (["calibrate", "b", "--data", "d.npz", "--risk-metric", "x"], "'x' is not one of"),
    (["calibrate", "b", "--data", "d.npz", "--max-accuracy-drop", "1"], "1pp or 1%"),
    (["compile", "b", "-t", "rpi4", "-o", "o", "--max-quant-drop", "x"], "1pp or 1%"),
]


@pytest.mark.parametrize(("argv", "says"), MALFORMED)
def test_a_malformed_value_is_one_line_in_our_words(argv, says):
    result = invoke(argv)
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert line.startswith("error: Invalid value for '") and says in line, line
    for leak in ("Input should", "Value error", "pydantic", "Traceback"):
        assert leak not in line
