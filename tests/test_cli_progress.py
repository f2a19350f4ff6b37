"""Progress on stderr tells slow from hung: plain timed lines when stderr is not a terminal,
while the command runs, never an ANSI code; -q and --json (for scripts) leave them out."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.hang import HANG_S
from fixtures.targets_digits import load_weights, write_bundle

from edgeexit.cli import progress as cli_progress
from edgeexit.cli.progress import _duration, _line, _lines, _Stage, interrupted_line, progress

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("progress") / "b", load_weights())


def edgeexit(*args: str) -> subprocess.Popen:
    """The command line in its own process, stderr a pipe (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "edgeexit", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_plain_progress_lines_arrive_on_a_pipe_while_the_command_runs(bundle):
    # profile measures for at least --min-seconds once it has started: still at work when
    # its first line (a second in) arrives, and a tick of the lines later
    proc = edgeexit("profile", str(bundle), "--repeats", "3", "--min-seconds", "6")
    line = proc.stderr.readline()
    while line and not line.startswith("profile: "):
        line = proc.stderr.readline()
    running = proc.poll() is None
    out, rest = proc.communicate(timeout=HANG_S)
    lines = [line, *(x for x in rest.splitlines(keepends=True) if x.startswith("profile: "))]
    assert proc.returncode == 0 and running, rest
    assert len(lines) >= 2 and all(" elapsed" in x for x in lines), lines
    assert "\x1b" not in line + rest  # no ANSI code in a log
    assert "segment" in out and "profile:" not in out  # stdout: the table only


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_quiet_and_json_leave_the_lines_out(bundle, flag):
    args = ["-q", "profile", str(bundle)] if flag == "-q" else ["profile", str(bundle), "--json"]
    proc = edgeexit(*args, "--repeats", "3", "--min-seconds", "2")
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, err
    assert "profile: " not in err and "\x1b" not in err


def test_a_line_gives_the_count_the_time_elapsed_and_the_time_left():
    stage = _Stage("validating segments", done=2, total=4, since=3.0, done_then=0)
    assert _line(stage, now=15.0, elapsed_s=15.0) == (
        "validating segments 2/4, 15 s elapsed, ~12 s left"  # 2 more at 6 s each
    )
    started = _Stage("training, step", done=0, total=900, since=3.0, done_then=0)
    assert _line(started, now=4.0, elapsed_s=4.0) == "training, step 0/900, 4 s elapsed"
    unknown = _Stage("loading torch and onnx", done=0, total=0, since=0.0, done_then=0)
    assert _line(unknown, now=8.0, elapsed_s=8.0) == "loading torch and onnx, 8 s elapsed"
    finished = _Stage("exits", done=718, total=718, since=0.0, done_then=0)
    assert "left" not in _line(finished, now=9.0, elapsed_s=9.0)  # more may follow
    assert [_duration(s) for s in (8.4, 125, 3720)] == ["8 s", "2 min 05 s", "1 h 02 min"]


def test_ctrl_c_in_progress_says_what_was_kept():
    def stopped(kept) -> str:
        with pytest.raises(KeyboardInterrupt) as caught, progress("x", kept=kept):
            raise KeyboardInterrupt
        return interrupted_line(caught.value)  # what the CLI prints

    assert stopped("nothing written; out not created") == (
        "interrupted: nothing written; out not created"
    )
    kept_then = stopped(lambda: "demo-out keeps the steps that finished: model.pt")
    assert kept_then == "interrupted: demo-out keeps the steps that finished: model.pt"
    assert interrupted_line(KeyboardInterrupt()) == "interrupted"


def test_a_closed_pipe_ends_the_lines_not_the_command(monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_progress, "FIRST_LINE_S", 0.0)  # a line at every new stage
    with _lines("demo", ClosedPipe()) as tell:
        tell("training, batch", 1, 10)
        tell("exporting", 0, 0)  # the command goes on
