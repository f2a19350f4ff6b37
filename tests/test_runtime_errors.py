"""Bad inputs and bad bundles: each a clean one-line error, from the API and from the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from runtime_bundles import copy_bundle, exported
from typer.testing import CliRunner

from edgeexit.cli import app
from edgeexit.errors import BundleError, InputError, TargetError
from edgeexit.runtime import Runtime


@pytest.fixture(scope="module")
def resnet():
    return exported("digits_resnet")


@pytest.fixture(scope="module")
def rt(resnet):
    return Runtime(resnet.bundle, threads=1)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (np.zeros((2, 1, 8, 7), np.float32), ["'x'", "(2, 1, 8, 7)", "(batch, 1, 8, 8)"]),
        (np.zeros((2, 8, 8), np.float32), ["'x'", "rank 3", "rank 4"]),
        (np.zeros((2, 1, 8, 8), np.float64), ["'x'", "float64", "expected float32"]),
        (np.zeros((0, 1, 8, 8), np.float32), ["'x'", "empty batch"]),
        ([[0.0]], ["'x'", "list", "numpy array"]),
        ({"y": np.zeros((1, 1, 8, 8), np.float32)}, ["unknown input 'y'", "['x']"]),
        ("x.npy", ["str", "numpy array"]),
    ],
)
def test_bad_inputs_name_input_expected_and_received(rt, inputs, words):
    with pytest.raises(InputError) as err:
        rt.run(inputs)
    assert isinstance(err.value, ValueError)
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_inputs_must_agree_on_batch():
    ex = exported("tiny_bert")
    rt = Runtime(ex.bundle, threads=1)
    ids, mask = ex.inputs
    with pytest.raises(InputError, match="'attention_mask' has batch 3; expected 24"):
        rt.run([ids, mask[:3]])
    with pytest.raises(InputError, match="got 1 inputs; expected 2"):
        rt.run([ids])


def test_bad_thresholds(rt, resnet):
    x = resnet.inputs[0]
    with pytest.raises(InputError, match="got 3 thresholds; expected 4"):
        rt.run(x, thresholds=[0.5, 0.5, 0.5])
    with pytest.raises(InputError, match="NaN"):
        rt.run(x, thresholds=[float("nan")] * 4)


def test_run_segment_checks_its_feeds(rt):
    with pytest.raises(InputError, match="segment 1 input 'carry_0_0' is float32 \\(2, 3\\)"):
        rt.run_segment(1, [np.zeros((2, 3), np.float32)])
    with pytest.raises(InputError, match="out of range"):
        rt.run_segment(4, [])


def tamper(bundle):
    with open(bundle / "segment_01.onnx", "ab") as f:
        f.write(b"\0")


def drop(bundle):
    (bundle / "segment_02.onnx").unlink()


def break_json(bundle):
    (bundle / "manifest.json").write_text('{"format": "edgeexit.bundle/1", "inputs": [')


def other_version(bundle):
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["format"] = "edgeexit.bundle/3"
    (bundle / "manifest.json").write_text(json.dumps(doc))


def drop_key(bundle):
    doc = json.loads((bundle / "manifest.json").read_text())
    del doc["segments"][0]["score"]
    (bundle / "manifest.json").write_text(json.dumps(doc))


def wrong_output(bundle):
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["segments"][0]["score"] = "nope"
    (bundle / "manifest.json").write_text(json.dumps(doc))


BREAKAGES = {
    tamper: "segment_01.onnx does not match its sha256",
    drop: "segment_02.onnx is missing",
    break_json: "manifest.json is not readable JSON",
    other_version: "manifest format is 'edgeexit.bundle/3'",
    drop_key: "segments[0].score must be a non-empty string",
    wrong_output: "segment_00.onnx has no output 'nope'",
}


@pytest.fixture(params=list(BREAKAGES), ids=lambda f: f.__name__)
def broken(request, resnet, tmp_path):
    bundle = copy_bundle(resnet.bundle, tmp_path / "bundle")
    request.param(bundle)
    return bundle, BREAKAGES[request.param]


def test_broken_bundles_are_refused_at_load(broken):
    bundle, message = broken
    with pytest.raises(BundleError, match=re.escape(message)):
        Runtime(bundle)


def test_unknown_target_and_provider(resnet):
    with pytest.raises(TargetError, match="unknown target 'toaster'"):
        Runtime(resnet.bundle, target="toaster")
    with pytest.raises(TargetError, match="NoSuchExecutionProvider is not available"):
        Runtime(resnet.bundle, providers=["NoSuchExecutionProvider"])


# -- the CLI -------------------------------------------------------------------------------


def cli(*args):
    return CliRunner().invoke(app, ["run", *map(str, args)])


def assert_one_line_error(result, message):
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.output


def test_cli_run_prints_table_and_json(resnet, tmp_path):
    data = tmp_path / "x.npz"
    np.savez(data, x=resnet.inputs[0][:5])
    table = cli(resnet.bundle, "--input", data, "--threads", "1")
    assert table.exit_code == 0, table.output
    for word in ("prediction", "exit", "latency", "energy", "modeled"):
        assert word in table.stdout
    out = cli(resnet.bundle, "--input", data, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["exit_index"] == [3] * 5 and len(doc["predictions"]) == 5
    assert doc["energy_source"] == "modeled" and doc["energy_mj"] > 0
    assert doc["latency_ms"] > 0 and len(doc["segment_ms"]) == 4
    assert doc["warmup_calls"] == 1
    cold = cli(resnet.bundle, "--input", data, "--json", "--warmup", "0")
    assert cold.exit_code == 0 and json.loads(cold.stdout)["warmup_calls"] == 0
    assert cli(resnet.bundle, "--input", data, "--warmup", "-1").exit_code == 2


def test_cli_errors_are_one_line(broken, resnet, tmp_path):
    bundle, message = broken
    data = tmp_path / "x.npy"
    np.save(data, resnet.inputs[0][:2])
    assert_one_line_error(cli(bundle, "--input", data), message)


def test_cli_bad_input_and_target(resnet, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 1, 8, 7), np.float32))
    assert_one_line_error(cli(resnet.bundle, "--input", wrong), "input 'x' has shape (2, 1, 8, 7)")
    good = tmp_path / "x.npy"
    np.save(good, resnet.inputs[0][:2])
    bad_target = cli(resnet.bundle, "--input", good, "--target", "toaster")
    assert bad_target.exit_code == 2 and "'toaster' is not a target" in bad_target.stderr
