"""The docs' examples run as they stand: the README's Python API is docs/examples/python_api.py
word for word, and that file runs end to end (save, export, profile, calibrate, bench, run);
docs/export.md's Hugging Face example is docs/examples/hugging_face.py, which runs alone
(a newcomer's copy and paste) and writes a bundle that `calibrate` takes with its data."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.hang import HANG_S

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "python_api.py"
HF_EXAMPLE = ROOT / "docs" / "examples" / "hugging_face.py"


def test_the_readme_shows_the_example_word_for_word():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The Python API") :]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    assert block == EXAMPLE.read_text()


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path):
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "met" in done.stdout and "Learn-then-Test" in done.stdout
    thresholds = done.stdout.splitlines()[0]
    assert not thresholds.startswith("(inf, inf"), thresholds  # it shows early exits
    assert {"model.pt", "bundle", "cal.npz", "test.npz", "x86.json"} <= {
        p.name for p in tmp_path.iterdir()
    }


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=HANG_S)  # fmt: skip


def test_export_md_shows_the_hugging_face_example_word_for_word():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "export.md").read_text(), re.S)
    assert HF_EXAMPLE.read_text() in blocks


@pytest.mark.slow
def test_the_hugging_face_example_runs_alone_and_its_data_calibrates(tmp_path):
    pytest.importorskip("transformers")
    done = run_python(str(HF_EXAMPLE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "failed to run" not in done.stderr  # onnxsim's fold retries are not shown
    manifest = json.loads((tmp_path / "bert-bundle" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    calibrated = run_python("-m", "edgeexit", "calibrate", "bert-bundle", "--data", "cal.npz",
                            "--max-accuracy-drop", "0.05", cwd=tmp_path)  # fmt: skip
    assert calibrated.returncode == 0, calibrated.stderr[-2000:]
    assert "guaranteed" in calibrated.stdout
