"""First contact with the CLI: one name per concept on every command, --version, --quiet,
shell completion, `inspect`, and `run` reporting accuracy when the data has labels."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
import typer
from fixtures.hang import HANG_S
from typer.testing import CliRunner

from edgeexit.cli import app

runner = CliRunner()

# concept -> the spellings every command that takes it must accept
SPELLINGS = {
    "--target": {"--target", "-t"},
    "--batch-size": {"--batch-size", "-b"},
    "--out": {"--out", "-o"},
    "--json": {"--json"},
}


def commands() -> dict:
    group = typer.main.get_command(app)
    return dict(group.commands)


def test_every_command_spells_a_concept_the_same_way():
    for name, command in commands().items():
        options = [set(p.opts) for p in command.params if p.param_type_name == "option"]
        spelled = set().union(*options)
        for concept, spellings in SPELLINGS.items():
            matching = [o for o in options if concept in o]
            if matching:
                assert spellings <= matching[0], f"{name}: {concept} without {spellings}"
        assert "--batch" not in spelled or "--batch-size" in spelled, name
        assert "--json" in spelled, f"{name} has no --json"


def test_every_command_that_reads_a_data_file_takes_it_as_data():
    # a data file: --data itself, or an older or narrower name for it (run's --input,
    # export's and compile's --calib-data); demo's --test-data is a second file
    readers = {}
    for name, command in commands().items():
        for p in command.params:
            opts = set(getattr(p, "opts", ()))
            if opts & {"--data", "--input", "--calib-data"}:
                readers[name] = opts
    assert set(readers) == {
        "bench", "calibrate", "compile", "demo", "export", "profile", "run", "split"
    }  # fmt: skip
    assert all("--data" in opts for opts in readers.values()), readers
    assert readers["run"] >= {"--input", "-i"}  # the documented spellings still work


def test_accuracy_drops_take_one_unit_everywhere():
    from edgeexit.cli import params

    drop_options = [
        (name, p)
        for name, command in commands().items()
        for p in command.params
        if any(o in ("--max-accuracy-drop", "--max-quant-drop") for o in getattr(p, "opts", ()))
    ]
    assert {name for name, _ in drop_options} == {"calibrate", "compile", "demo", "export"}
    for _, option in drop_options:
        assert option.metavar == "DROP"
    assert params.accuracy_drop("0.01") == params.accuracy_drop("1pp") == pytest.approx(0.01)
    assert params.accuracy_drop("2.5 pp") == pytest.approx(0.025)
    assert params.accuracy_drop("1%") == params.accuracy_drop("1 %") == pytest.approx(0.01)
    for bad in ("1", "200", "-0.1", "nan", "100pp", "100%", "x", "1%%", "pp", "%"):
        with pytest.raises(typer.BadParameter, match=r"expected a fraction in \[0, 1\) such "
                           "as 0.01, or points such as 1pp or 1%"):  # fmt: skip
            params.accuracy_drop(bad)


@pytest.mark.parametrize("value", ["1 percent", "0.01.5", "-1pp"])
def test_a_malformed_accuracy_drop_lists_the_accepted_forms(value, tmp_path):
    result = runner.invoke(
        app, ["calibrate", str(tmp_path), "--data", "d.npz", "--max-accuracy-drop", value]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: Invalid value for '--max-accuracy-drop': ")
    assert "expected a fraction in [0, 1) such as 0.01, or points such as 1pp or 1%" in line


def test_version_names_the_runtime_dependencies():
    import edgeexit

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith(f"edgeexit {edgeexit.__version__} (onnxruntime ")


def test_quiet_silences_the_notes_and_only_them():
    assert runner.invoke(app, ["-q", "targets", "--json"]).exit_code == 0
    assert logging.getLogger("edgeexit").level == logging.ERROR
    assert runner.invoke(app, ["targets", "--json"]).exit_code == 0
    assert logging.getLogger("edgeexit").level == logging.NOTSET


def test_shell_completion_is_offered():
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0 and "complete" in result.output


@pytest.fixture
def bundle_and_data(tmp_path):
    pytest.importorskip("torch")
    from calibrate_cli_bundle import fresh_bundle

    return fresh_bundle(tmp_path)


def test_inspect_shows_the_bundle_and_checks_it(bundle_and_data, tmp_path):
    bundle, _ = bundle_and_data
    doc = json.loads(runner.invoke(app, ["inspect", str(bundle), "--json"]).stdout)
    assert doc["integrity"] == "ok" and doc["criterion"] == "confidence"
    assert doc["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert len(doc["segments"]) == 3 and all(s["nodes"] > 0 for s in doc["segments"])
    assert "Conv" in doc["segments"][0]["ops"] and doc["calibration"] is None
    bodies = [s["body_bytes"] for s in doc["segments"]]
    assert all(b and b > 0 for b in bodies[:-1]) and bodies[-1] is None
    prefixes = [s["prefix_bytes"] for s in doc["segments"]]
    assert prefixes[0] is None and prefixes[1] > 0 and prefixes[2] is None
    table = runner.invoke(app, ["inspect", str(bundle)], env={"COLUMNS": "400"})
    assert table.exit_code == 0 and "every file matches its sha256" in table.output
    assert "exit 1 has a prefix graph" in table.output
    assert "the plain network up to exit 2 as one graph" in table.output
    assert "x float32[batch, 1, 8, 8]" in table.output
    tampered = shutil.copytree(bundle, tmp_path / "tampered")
    with open(tampered / "segment_01.onnx", "ab") as f:
        f.write(b"x")
    result = runner.invoke(app, ["inspect", str(tampered)])
    assert result.exit_code == 1
    assert "integrity check failed: segment file" in result.stderr
    assert all(s["resident_mb"] is None for s in doc["segments"])  # measured on request


def test_inspect_memory_measures_each_segment_as_the_runtime_opens_it(bundle_and_data):
    import sys

    bundle, _ = bundle_and_data
    doc = json.loads(runner.invoke(app, ["inspect", str(bundle), "--memory", "--json"]).stdout)
    resident = [s["resident_mb"] for s in doc["segments"]]
    if sys.platform.startswith("linux"):
        assert all(r is not None and r >= 0 for r in resident)
    table = runner.invoke(app, ["inspect", str(bundle), "--memory"])
    assert table.exit_code == 0 and "resident" in table.output


@pytest.mark.parametrize("memory", [[], ["--memory"]])
def test_inspect_at_80_columns_cuts_no_name(bundle_and_data, memory):
    bundle, _ = bundle_and_data
    result = runner.invoke(app, ["inspect", str(bundle), *memory], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.output, result.output
    for name in ("segment_00.onnx", "segment_02.onnx", "threshold", "top operators"):
        assert name in result.output


def test_run_reports_accuracy_when_the_data_has_labels(bundle_and_data, tmp_path):
    bundle, data = bundle_and_data
    labeled = json.loads(
        runner.invoke(app, ["run", str(bundle), "--data", str(data), "--json"]).stdout
    )
    truth = np.load(data)["y"]
    assert labeled["accuracy"] == pytest.approx(np.mean(np.array(labeled["predictions"]) == truth))
    bare = tmp_path / "x.npy"
    np.save(bare, np.load(data)["x"])
    unlabeled = json.loads(
        runner.invoke(app, ["run", str(bundle), "-i", str(bare), "--json"]).stdout
    )
    assert unlabeled["accuracy"] is None


@pytest.mark.parametrize(
    ("argv", "command"),
    [(["export", "model.pt", "-o", "out"], "export"), (["demo", "-o", "demo"], "demo")],
)
def test_host_commands_on_a_device_install_say_which_extra(tmp_path, argv, command):
    import subprocess
    import sys

    (tmp_path / "model.pt").write_bytes(b"not read")
    code = (
        "import sys; sys.modules['torch'] = None\n"  # what a device install looks like
        "from edgeexit.cli import main\n"
        f"sys.argv = ['edgeexit', *{argv!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG_S)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: edgeexit {command} needs torch, which this install lacks (a device install "
        "has the runtime only): on the host, pip install 'edgeexit[export]' (torch: the CPU "
        "wheel first)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # nothing written


def test_data_of_another_size_than_the_export_says_what_to_change(bundle_and_data, tmp_path):
    bundle, _ = bundle_and_data
    small = tmp_path / "small.npz"
    np.savez(small, x=np.zeros((3, 1, 6, 6), np.float32))
    result = runner.invoke(app, ["run", str(bundle), "--data", str(small)])
    assert result.exit_code == 1
    assert "expected ('batch', 1, 8, 8); the bundle was exported for that size: pad or cut" in (
        result.stderr
    )


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_shows_flags_as_flags_and_arguments_by_name(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    assert "{bundle}" not in result.output and "{model}" not in result.output


@pytest.mark.parametrize("name", [None, *sorted(commands())])
def test_help_at_80_columns_cuts_no_option_name(name):
    # rich shrinks every column of the options table alike when it is too wide, so a long
    # type, a --no- twin or an unbreakable word in a help text cut the option names
    result = runner.invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output, result.output
    command = commands()[name] if name else typer.main.get_command(app)
    for param in command.params:
        for opt in (*param.opts, *getattr(param, "secondary_opts", ())):
            if opt.startswith("--"):  # shown whole, at a word boundary
                assert re.search(rf"(^|[\s,]){re.escape(opt)}($|[\s,])", result.output, re.M), opt
