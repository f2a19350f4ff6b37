"""Text generation on the emulated Pi 4: every mode gives the host's tokens, for fused
fp32, int8 (MatMulNBits: ARM's kernels round their own way) and an int4-drafted bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeexit.cli import app


@pytest.mark.parametrize("bundle", ["decoder", "decoder_int8", "decoder_draft"])
@pytest.mark.parametrize("mode", ["full", "self-speculative", "early-exit"])
def test_generate_gives_the_hosts_tokens(host_artifacts: Path, bundle: str, mode: str):
    host = json.loads((host_artifacts / "host_decoder.json").read_text())[bundle]
    args = ["generate", str(host_artifacts / bundle), "--prompt-ids",
            str(host_artifacts / "decoder_prompt.txt"), "-n", "16", "--mode", mode,
            "-t", "rpi4", "--thresholds", "0.5,0.5", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tokens"] == host[mode]
    assert host["self-speculative"] == host["full"]
