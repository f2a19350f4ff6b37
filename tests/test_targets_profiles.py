"""Every shipped profile loads; bad profiles are refused with one clear line."""

import json

import pytest
from typer.testing import CliRunner

from edgeexit.cli import app
from edgeexit.errors import TargetError
from edgeexit.targets import available_targets, load_target
from edgeexit.targets.spec import parse_target

GOOD = {"name": "board", "arch": "aarch64", "providers": ["CPUExecutionProvider"]}


def test_the_issue_targets_are_shipped():
    assert {"x86-cpu", "rpi4", "rpi5", "jetson-orin-nano", "cuda"} <= set(available_targets())


@pytest.mark.parametrize("name", available_targets())
def test_every_shipped_profile_loads_with_a_power_model(name):
    target = load_target(name)
    assert target.name == name
    assert 0 < target.idle_power_w <= target.active_power_w
    assert target.max_ir_version >= 3 and target.max_opset >= 7


def test_arm_targets_are_int8_and_cuda_targets_fp16():
    assert load_target("rpi4").precision == load_target("rpi5").precision == "int8"
    assert load_target("cuda").precision == load_target("jetson-orin-nano").precision == "fp16"
    assert load_target("rpi4").max_ir_version == 9  # ORT 1.17 rejects IR 10


def test_user_profile_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\narch = "x86_64"\nproviders = ["CPUExecutionProvider"]\n')
    target = load_target(str(path))
    assert (target.name, target.description, target.precision) == ("mine", "mine", "fp32")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"name": None}, "missing required key 'name'"),
        (
            {"providers": ["QuantumExecutionProvider"]},
            "unknown provider 'QuantumExecutionProvider'",
        ),
        ({"providers": []}, "'providers' must be a non-empty list"),
        ({"arch": "riscv"}, "arch 'riscv' is not one of x86_64, aarch64"),
        ({"precision": "int4"}, "precision 'int4' is not one of"),
        ({"precision": "fp16"}, "precision 'fp16' needs a GPU provider"),
        ({"intra_op_threads": 0}, "intra_op_threads must be a positive integer"),
        ({"max_opset": "21"}, "max_opset must be an integer >= 7"),
        ({"energy_meter": "multimeter"}, "energy_meter 'multimeter' is not one of"),
        ({"active_power_w": -1}, "active_power_w must be a number of watts >= 0"),
        ({"idle_power_w": 5.0, "active_power_w": 2.0}, "active_power_w (2.0) is below"),
        ({"provider_options": [{}, {}]}, "'provider_options' has 2 tables for 1 providers"),
    ],
)
def test_bad_profiles_are_refused_clearly(change, message):
    doc = {**GOOD, **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(TargetError) as err:
        parse_target(doc, source="bad.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("bad.toml: ")
    assert "\n" not in str(err.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(TargetError, match="arch 'riscv'.*; precision 'int4'"):
        parse_target({**GOOD, "arch": "riscv", "precision": "int4"})


def test_unknown_target_and_broken_toml(tmp_path):
    with pytest.raises(TargetError, match="unknown target 'toaster'; expected one of"):
        load_target("toaster")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target(str(broken))


def test_targets_cli_lists_and_shows():
    runner = CliRunner()
    listed = runner.invoke(app, ["targets"])
    assert listed.exit_code == 0, listed.output
    assert "jetson-orin-nano" in listed.output and "rpi5-pmic" in listed.output
    shown = runner.invoke(app, ["targets", "rpi4", "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["max_ir_version"] == 9
    bad = runner.invoke(app, ["targets", "toaster"])
    assert bad.exit_code == 1
    assert "error: unknown target 'toaster'" in bad.output


def test_device_side_target_and_energy_modules_stay_off_the_export_side():
    import subprocess
    import sys

    modules = (
        "edgeexit.measure.profiling, edgeexit.targets.render, edgeexit.energy.rapl, "
        "edgeexit.energy.nvml, edgeexit.energy.ina3221, edgeexit.energy.rpi_pmic, "
        "edgeexit.cli.profile, edgeexit.cli.targets"
    )
    probe = f"import {modules}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "onnx", "onnxsim", "onnxscript")]
