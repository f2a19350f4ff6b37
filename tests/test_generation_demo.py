"""The generation demo end to end, with a briefly trained model and short generations."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_the_generation_demo_trains_once_and_reports_every_mode(tmp_path, monkeypatch):
    from edgeexit.examples.generation_demo import run_generation_demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    report = run_generation_demo(tmp_path / "out", steps=2, max_new_tokens=6)
    doc = report.to_json()
    assert [r["mode"] for r in doc["modes"]] == ["full", "self-speculative", "early-exit"]
    assert doc["modes"][1]["agreement"] == 1.0  # self-speculative is full decoding
    assert doc["calibration"]["held"] in (True, False)
    assert (tmp_path / "out" / "bundle" / "manifest.json").is_file()
    cached = list((tmp_path / "cache" / "edgeexit").glob("decoder-*.pt"))
    assert len(cached) == 1
    run_generation_demo(tmp_path / "out", steps=2, max_new_tokens=6)  # its own earlier folder
    assert list((tmp_path / "cache" / "edgeexit").glob("decoder-*.pt")) == cached


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
