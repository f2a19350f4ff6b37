"""`edgeexit demo` and its variants: each its own default folder, --quick's settings (user
flags still win), one variant at a time. The demos themselves are stood in for here; they
run end to end in test_examples_demo.py and test_generation_demo.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import edgeexit.cli.demo as cli_demo
from edgeexit.cli import app
from edgeexit.examples import demo, denoise, generation_demo, tokens

VARIANTS = {  # flag -> (module, its run function, the folder it writes by default)
    None: (demo, "run_demo", "demo-out"),
    "--generate": (generation_demo, "run_generation_demo", "demo-generate"),
    "--denoise": (denoise, "run_denoise_demo", "demo-denoise"),
    "--tokens": (tokens, "run_token_demo", "demo-tokens"),
}


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """Each demo's run function records its folder and keywords instead of running."""
    seen: list[tuple[Path, dict]] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_demo, "_run_and_show", lambda run, as_json, kept: run(None))

    def recorder(first, progress, **kwargs):
        if isinstance(first, demo.DemoOptions):  # the digits demo takes its options
            kwargs = {k: getattr(first, k) for k in ("epochs", "profile_repeats")}
            first = first.out_dir
        kwargs.pop("max_quality_drop", None)  # --denoise's budget, always passed
        seen.append((Path(first), kwargs))

    for module, name, _ in VARIANTS.values():
        monkeypatch.setattr(module, name, recorder)
    return seen


def demo_with(*args: str) -> int:
    return CliRunner().invoke(app, ["demo", *args]).exit_code


def test_each_demo_writes_its_own_folder_by_default(runs):
    for flag in VARIANTS:
        assert demo_with(*filter(None, [flag])) == 0
    folders = [str(folder) for folder, _ in runs]
    assert folders == [folder for _, _, folder in VARIANTS.values()]
    assert len(set(folders)) == len(VARIANTS)
    assert demo_with("--tokens", "-o", "mine") == 0 and str(runs[-1][0]) == "mine"


def test_quick_runs_each_demos_quick_settings_and_given_flags_win(runs):
    for flag, (module, _, _) in VARIANTS.items():
        assert demo_with(*filter(None, [flag]), "--quick") == 0
        assert runs[-1][1] == module.QUICK, flag
    assert demo_with("--quick", "--epochs", "5") == 0
    assert runs[-1][1] == {**demo.QUICK, "epochs": 5}
    assert demo_with("--generate", "--quick", "--steps", "7") == 0
    assert runs[-1][1] == {**generation_demo.QUICK, "steps": 7}
    assert demo_with("--denoise") == 0 and runs[-1][1] == {}  # the demo's own defaults


def test_one_demo_at_a_time(runs):
    result = CliRunner().invoke(app, ["demo", "--generate", "--tokens"])
    assert result.exit_code == 2 and runs == []
    assert result.stderr.strip() == "error: --generate and --tokens: choose one demo"
