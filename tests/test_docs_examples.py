"""The docs' examples run as they stand: the README's Python API is docs/examples/python_api.py
word for word, and that file runs end to end (save, export, profile, calibrate, bench, run)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.hang import HANG_S

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "python_api.py"


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
