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
