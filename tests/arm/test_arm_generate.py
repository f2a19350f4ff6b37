"""Text generation on the emulated Pi 4: every mode gives the host's tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeexit.cli import app


@pytest.mark.parametrize("mode", ["full", "self-speculative", "early-exit"])
def test_generate_gives_the_hosts_tokens(host_artifacts: Path, mode: str):
    host = json.loads((host_artifacts / "host_decoder.json").read_text())
    args = ["generate", str(host_artifacts / "decoder"), "--prompt-ids",
            str(host_artifacts / "decoder_prompt.txt"), "-n", "16", "--mode", mode,
            "-t", "rpi4", "--thresholds", "0.5,0.5", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tokens"] == host[mode]
    assert host["self-speculative"] == host["full"]
