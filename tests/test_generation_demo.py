"""The generation demo end to end, with a briefly trained model and short generations."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_the_generation_demo_trains_once_and_reports_every_mode(tmp_path, monkeypatch):
    from edgeexit.examples.generation_demo import run_generation_demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    report = run_generation_demo(tmp_path / "out", steps=2, prompts=12, max_new_tokens=6)
    doc = report.to_json()
    assert [r["mode"] for r in doc["modes"]] == ["full", "self-speculative", "early-exit"]
    assert doc["modes"][1]["agreement"] == 1.0  # self-speculative is full decoding
    assert doc["calibration"]["held"] in (True, False)
    assert (tmp_path / "out" / "bundle" / "manifest.json").is_file()
    cached = list((tmp_path / "cache" / "edgeexit").glob("decoder-*.pt"))
    assert len(cached) == 1
    run_generation_demo(tmp_path / "out", steps=2, prompts=12, max_new_tokens=6)  # its own
    assert list((tmp_path / "cache" / "edgeexit").glob("decoder-*.pt")) == cached


def test_the_quick_generation_demo_leaves_prompts_calibrate_generation_takes(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from edgeexit.cli import app
    from edgeexit.examples.generation_demo import QUICK_CONFIG, run_generation_demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "demo-generate"
    report = run_generation_demo(out, config=QUICK_CONFIG, steps=2, prompts=9, max_new_tokens=4)
    prompts = json.loads((out / "prompts.json").read_text())
    held_out = json.loads((out / "held-out.json").read_text())
    assert (len(prompts), len(held_out)) == (6, 3)  # two thirds calibrate, a third checks
    assert "4 layers of 128, 2 training steps" in report.to_json()["trained"]
    *_, calibrate = report.next_steps()  # the command the demo prints as next:
    args = calibrate.split()[1:] + ["--dry-run", "-n", "4", "--json"]
    assert args[:4] == ["calibrate-generation", str(out / "bundle"), "--prompts",
                        str(out / "prompts.json")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["held"] in (True, False)  # checked on held-out.json


def test_held_out_cross_entropy_gives_each_exit_its_figure():
    import math

    import torch

    from edgeexit.examples.generation_demo import held_out_cross_entropy
    from edgeexit.examples.text import VOCAB
    from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=VOCAB, dim=16, heads=2, layers=2, hidden=32,
                           exit_after=(1, 2), max_positions=160)  # fmt: skip
    figures = held_out_cross_entropy(MultiExitDecoder(config), windows=4)
    assert len(figures) == 2 and all(math.isfinite(f) for f in figures)
    assert all(abs(f - math.log(VOCAB)) < 1.0 for f in figures)  # untrained: near uniform
