"""Text generation on the emulated Pi 4: every mode gives the host's tokens, for plain and
fused fp32, int8 (MatMulNBits: ARM's kernels round their own way) and an int4-drafted
bundle; where the installed onnxruntime is too old for a form (the oldest flavor's 1.17),
generate refuses it in one line instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeexit.cli import app
from edgeexit.errors import BundleError
from edgeexit.generation.graphs import check_onnxruntime
from edgeexit.generation.manifest import read_decoder_manifest

BUNDLES = ["decoder", "decoder_fused", "decoder_int8", "decoder_draft"]


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("mode", ["full", "self-speculative", "early-exit"])
def test_generate_gives_the_hosts_tokens(host_artifacts: Path, bundle: str, mode: str):
    host = json.loads((host_artifacts / "host_decoder.json").read_text())[bundle]
    args = ["generate", str(host_artifacts / bundle), "--prompt-ids",
            str(host_artifacts / "decoder_prompt.txt"), "-n", "16", "--mode", mode,
            "-t", "rpi4", "--thresholds", "0.5,0.5", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    if not runs_here(host_artifacts / bundle):
        assert result.exit_code == 1 and "need onnxruntime >= 1.2" in result.output
        return
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tokens"] == host[mode]
    assert host["self-speculative"] == host["full"]


def runs_here(bundle: Path) -> bool:
    try:
        check_onnxruntime(read_decoder_manifest(bundle))
    except BundleError:  # the one line the test above checks
        return False
    return True
