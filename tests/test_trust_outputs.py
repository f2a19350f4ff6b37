"""What edgeexit does to existing paths: nothing that is not its own is replaced, a bundle
is swapped with no moment at which its path is missing, a crash or kill -9 leaves the old
bundle or the new one and no litter, one writer at a time, the user's umask respected, and
a full or read-only disk is one line."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.hang import HANG_S
from fixtures.targets_digits import load_weights, write_bundle
from torch import nn
from typer.testing import CliRunner

import edgeexit
from edgeexit import files
from edgeexit.bundle import read_manifest, verify_segments
from edgeexit.cli import app
from edgeexit.errors import CheckpointError, OutputError
from edgeexit.examples.models import digits_cnn, digits_resnet

torch.set_num_threads(1)
REPO = Path(__file__).parents[1]


def small_model() -> edgeexit.MultiExit:
    torch.manual_seed(0)
    return edgeexit.MultiExit([nn.Linear(4, 4), nn.Linear(4, 4)], [nn.Linear(4, 3)] * 2)


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


# -- the Python API refuses what is not ours ------------------------------------------------


def test_export_refuses_the_working_directory_and_keeps_every_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weights": 1}, tmp_path / "model.pt")
    before = tree(tmp_path)
    for out in (".", tmp_path, tmp_path.parent):
        with pytest.raises(OutputError, match="working directory"):
            edgeexit.export(small_model(), torch.rand(2, 4), out)
    assert tree(tmp_path) == before


def test_export_refuses_a_folder_or_file_of_the_users(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("...")
    (tmp_path / "notes.txt").write_text("notes")
    before = tree(tmp_path)
    with pytest.raises(OutputError, match="exists and is not an edgeexit bundle"):
        edgeexit.export(small_model(), torch.rand(2, 4), tmp_path / "thesis")
    with pytest.raises(OutputError, match="is a file, not an edgeexit bundle"):
        edgeexit.export(small_model(), torch.rand(2, 4), tmp_path / "notes.txt")
    assert tree(tmp_path) == before


def test_a_bundle_or_an_empty_folder_may_be_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    edgeexit.export(small_model(), torch.rand(2, 4), tmp_path / "empty")
    edgeexit.export(small_model(), torch.rand(2, 4), tmp_path / "empty", criterion="margin")
    assert read_manifest(tmp_path / "empty").criterion == "margin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporaries left


def test_compile_refuses_its_own_source(tmp_path):
    from edgeexit.compile.compiler import compile_bundle

    src = write_bundle(tmp_path / "b", load_weights())
    before = tree(tmp_path)
    with pytest.raises(OutputError, match="is an input"):
        compile_bundle(src, src, "x86-cpu")
    assert tree(tmp_path) == before


def test_save_replaces_its_own_checkpoint_but_not_another_file(tmp_path):
    model = digits_cnn(width=4)
    x = torch.rand(2, 1, 8, 8)
    edgeexit.save(model, tmp_path / "m.pt", example_inputs=x)
    edgeexit.save(model, tmp_path / "m.pt", example_inputs=x)  # its own: replaced
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.7")
    with pytest.raises(OutputError, match="is not an edgeexit checkpoint"):
        edgeexit.save(model, tmp_path / "paper.pdf", example_inputs=x)
    assert (tmp_path / "paper.pdf").read_bytes() == b"%PDF-1.7"


def test_a_plot_replaces_only_a_plot_edgeexit_wrote(tmp_path):
    bundle = write_bundle(tmp_path / "b", load_weights())
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32))
    args = ["calibrate", str(bundle), "--data", str(data), "--max-accuracy-drop", "0.1"]
    plot = tmp_path / "p.png"
    for _ in range(2):  # the second run replaces the first run's plot
        result = CliRunner().invoke(app, [*args, "--plot", str(plot)])
        assert result.exit_code == 0, result.output
        assert files.is_plot(plot)
    foreign = tmp_path / "photo.png"
    foreign.write_bytes(files.PNG_MAGIC + b"\x00" * 64)
    result = CliRunner().invoke(app, [*args, "--plot", str(foreign)])
    assert result.exit_code == 1 and "is not a plot edgeexit wrote" in result.stderr


def test_a_failing_plot_leaves_the_manifest_untouched(tmp_path, monkeypatch):
    from edgeexit.calibrate.report import CalibrationReport
    from edgeexit.errors import CalibrationError

    bundle = write_bundle(tmp_path / "b", load_weights())
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32))
    before = (bundle / "manifest.json").read_bytes()

    def no_matplotlib(self):
        raise CalibrationError("--plot needs matplotlib: pip install 'edgeexit[plot]'")

    monkeypatch.setattr(CalibrationReport, "plot_png", no_matplotlib)
    args = ["calibrate", str(bundle), "--data", str(data), "--max-accuracy-drop", "0.1"]
    result = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "needs matplotlib" in result.stderr
    assert (bundle / "manifest.json").read_bytes() == before
    assert not (tmp_path / "p.png").exists()


# -- the swap: never a moment without a bundle ---------------------------------------------

CRASH_BETWEEN_RENAMES = textwrap.dedent(
    """
    import os, sys
    import edgeexit.files as files
    from fixtures.targets_digits import load_weights, write_bundle
    files.exchange = lambda a, b: False  # a platform without renameat2
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):
            os._exit(9)  # killed right after the old bundle was parked
    os.rename = rename
    from edgeexit.bundle import atomic_bundle_dir
    with atomic_bundle_dir(sys.argv[1]) as tmp:
        write_bundle(tmp, load_weights())
    """
)


def test_a_crash_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    out = write_bundle(tmp_path / "bundle", load_weights())
    before = tree(out)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_RENAMES, str(out)], env=env)
    assert proc.returncode == 9
    assert not out.exists() and list(tmp_path.glob(".bundle.old-*"))  # the crash window
    manifest = read_manifest(out)  # the next run (any reader) puts the old bundle back
    assert tree(out) == before and manifest.num_exits == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_exchange_leaves_no_moment_without_a_bundle(tmp_path, monkeypatch):
    out = write_bundle(tmp_path / "bundle", load_weights())
    seen = []
    real = files.exchange

    def exchange(a, b):
        seen.append(read_manifest(b).num_exits)  # still the old one, right before
        assert real(a, b)
        seen.append(read_manifest(b).num_exits)  # the new one, right after
        return True

    monkeypatch.setattr(files, "exchange", exchange)
    edgeexit.export(small_model(), torch.rand(2, 4), out)
    assert seen == [3, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_stale_temporaries_of_dead_processes_are_cleaned_and_nothing_else(tmp_path):
    out = tmp_path / "bundle"
    dead = tmp_path / ".bundle.tmp-999999999-deadbeef"  # no such process
    dead.mkdir()
    (dead / "segment_00.onnx").write_bytes(b"half")
    live = tmp_path / f".bundle.tmp-{os.getppid()}-0badcafe"  # a live process's
    live.mkdir()
    lookalike = tmp_path / ".bundle.tmp-notapid"
    lookalike.write_text("not ours")
    other = tmp_path / ".other.tmp-999999999-deadbeef"  # another output's: left alone
    other.write_text("x")
    edgeexit.export(small_model(), torch.rand(2, 4), out)
    assert not dead.exists() and live.exists() and lookalike.exists() and other.exists()


def test_export_made_folders_are_removed_when_it_fails(tmp_path):
    bad = edgeexit.MultiExit([nn.Linear(4, 4)], [nn.Linear(4, 3)])
    with pytest.raises(edgeexit.EdgeExitError):
        edgeexit.export(bad, torch.rand(2, 5), tmp_path / "a" / "b" / "bundle")
    assert list(tmp_path.iterdir()) == []


# -- kill -9 at any moment -----------------------------------------------------------------


def kill_at_random_moments(cmd: list[str], cwd: Path, check, *, runs: int, span_s: float):
    """Start ``cmd`` ``runs`` times, SIGKILL it at a random moment within ``span_s``, and
    call ``check()`` after each: the state must be whole every time."""
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(runs):
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.2, span_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check()


@pytest.mark.slow
def test_kill_9_during_export_leaves_the_old_or_the_new_bundle(tmp_path):
    edgeexit.save(
        digits_cnn(width=4), tmp_path / "m.pt",
        example_inputs=torch.rand(2, 1, 8, 8),
    )  # fmt: skip
    out = tmp_path / "bundle"
    write_bundle(out, load_weights())
    cmd = [sys.executable, "-m", "edgeexit", "export", "m.pt", "-o", "bundle"]

    def whole() -> None:
        manifest = read_manifest(out)  # restores a parked bundle, if any
        verify_segments(out, manifest)

    kill_at_random_moments(cmd, tmp_path, whole, runs=8, span_s=6.0)
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0
    whole()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "m.pt"]  # no litter


@pytest.mark.slow
def test_kill_9_during_calibrate_leaves_a_whole_manifest(tmp_path):
    bundle = write_bundle(tmp_path / "bundle", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((60, 1, 8, 8), np.float32))
    cmd = [sys.executable, "-m", "edgeexit", "calibrate", "bundle", "--data", "cal.npz",
           "--max-accuracy-drop", "0.05"]  # fmt: skip

    def whole() -> None:
        verify_segments(bundle, read_manifest(bundle))

    kill_at_random_moments(cmd, tmp_path, whole, runs=8, span_s=4.0)
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0
    assert read_manifest(bundle).extra["calibration"]
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["manifest.json", "segment_00.onnx", "segment_01.onnx", "segment_02.onnx"]


# -- one writer at a time -----------------------------------------------------------------


def test_a_second_calibrate_or_an_export_onto_a_bundle_in_use_is_refused(tmp_path):
    bundle = write_bundle(tmp_path / "b", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))
    before = tree(bundle)
    args = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1"]  # fmt: skip
    with files.locked(bundle, "calibrate"):  # another process's calibrate, in effect
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert "being changed by another edgeexit process" in result.stderr
        with pytest.raises(OutputError, match="being changed by another edgeexit process"):
            edgeexit.export(small_model(), torch.rand(2, 4), bundle)
    assert tree(bundle) == before
    assert CliRunner().invoke(app, args).exit_code == 0  # free again


# -- permissions ---------------------------------------------------------------------------


def test_new_files_follow_the_umask_and_calibrate_keeps_the_manifest_mode(tmp_path):
    old = os.umask(0o022)
    try:
        edgeexit.export(small_model(), torch.rand(2, 4), tmp_path / "b")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "b") == 0o755
    assert mode(tmp_path / "b" / "manifest.json") == 0o644
    assert mode(tmp_path / "b" / "segment_00.onnx") == 0o644
    os.chmod(tmp_path / "b" / "manifest.json", 0o640)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 4), np.float32))
    args = ["calibrate", str(tmp_path / "b"), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    assert mode(tmp_path / "b" / "manifest.json") == 0o640


# -- full and read-only disks --------------------------------------------------------------


def test_a_full_disk_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "b", load_weights())
    before = tree(tmp_path)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    manifest = read_manifest(bundle)
    with pytest.raises(OutputError, match="cannot write manifest .*No space left on device"):
        from edgeexit.bundle import write_manifest

        write_manifest(bundle, manifest)
    assert tree(tmp_path) == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB tmpfs (needs root and a kernel that lets this process mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or not allowed)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_and_a_read_only_one(small_disk, tmp_path):
    edgeexit.save(
        digits_resnet(width=64),
        tmp_path / "big.pt",
        example_inputs=torch.rand(2, 1, 8, 8),
    )  # fmt: skip  (segments larger than the 512 KiB disk)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "big.pt"), "-o",
                                      str(small_disk / "b")])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr and "Traceback" not in result.output
    assert list(small_disk.iterdir()) == []
    bundle = write_bundle(small_disk / "small", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))
    before = tree(small_disk)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    args = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Read-only file system" in result.stderr
    profile = CliRunner().invoke(app, ["profile", str(bundle), "--repeats", "1", "-o",
                                       str(small_disk / "p.json")])  # fmt: skip
    assert profile.exit_code == 1 and "Read-only file system" in profile.stderr
    assert tree(small_disk) == before


# -- Ctrl-C --------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(tmp_path):
    bundle = write_bundle(tmp_path / "b", load_weights())
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # profile measures for at least --min-seconds: every delay below lands while it works
    # (start-up, imports, profiling) or just after, whatever this machine's speed
    cmd = [sys.executable, "-m", "edgeexit", "profile", str(bundle), "--repeats", "3",
           "--min-seconds", "1.5"]  # fmt: skip
    interrupted = 0
    for delay in (0.15, 0.25, 0.35, 0.5, 0.7, 1.0):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate()
        assert b"Traceback" not in err, (delay, err.decode())
        # -2: the signal came while Python was shutting down after a complete run, when
        # it has already put back the default handler; the output is all there then.
        done = proc.returncode in (0, -signal.SIGINT) and b"segment" in out
        assert done or proc.returncode == 130, (delay, proc.returncode, err.decode())
        if proc.returncode == 130:  # one line, saying what was kept
            assert err.decode().splitlines()[-1] in ("interrupted", "interrupted: nothing written")
        interrupted += proc.returncode == 130
    assert interrupted >= 3


# Sends this process Ctrl-C while Python looks for the module named in INTERRUPT_AT: a
# Ctrl-C pressed at that moment of start-up, on any machine, however fast.
INTERRUPTING_SITECUSTOMIZE = """
import os, signal, sys

class InterruptAt:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["INTERRUPT_AT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptAt())
"""
PIP_SCRIPT = """import re
import sys
from edgeexit.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


@pytest.mark.parametrize("entry", ["python -m edgeexit", "the edgeexit script"])
@pytest.mark.parametrize(
    "module",
    [
        "edgeexit.lazy",  # import edgeexit itself
        "edgeexit.cli",  # the command line's module, before main() runs
        "typer",  # the application, imported by main() with Ctrl-C held back
        "onnxruntime",  # a native module, whose initialisation it could break
    ],
)
def test_ctrl_c_while_the_command_line_starts_exits_130_with_one_line(tmp_path, entry, module):
    (tmp_path / "sitecustomize.py").write_text(INTERRUPTING_SITECUSTOMIZE)
    (tmp_path / "edgeexit").write_text(PIP_SCRIPT)  # what pip installs as bin/edgeexit
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "INTERRUPT_AT": module}
    start = ["-m", "edgeexit"] if entry.startswith("python") else [str(tmp_path / "edgeexit")]
    proc = subprocess.run([sys.executable, *start, "targets"], env=env, capture_output=True,
                          text=True, timeout=HANG_S)  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted\n" and proc.stdout == ""


def test_a_ctrl_c_a_callback_swallowed_still_exits_130_without_a_traceback():
    """A Ctrl-C landing in code a native module called back (pydantic-core, while typer
    parses options) is 'ignored' by it: Python prints a traceback and the command goes on.
    Here a __del__ swallows it the same way (an unraisable exception) during a command."""
    script = textwrap.dedent("""
        import time
        from unittest import mock
        import edgeexit.cli.commands as commands
        from edgeexit.cli import main

        class Swallows:
            def __del__(self):
                raise KeyboardInterrupt

        def command(*args, **kwargs):
            Swallows()  # its __del__ raises into nowhere: an 'Exception ignored in' before
            for _ in range(200):
                time.sleep(0.01)
            print("went on")
            return 0

        with mock.patch.object(commands, "app", command):
            main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=HANG_S, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "ignored" not in proc.stderr
    assert "went on" not in proc.stdout and proc.stderr.strip() == "interrupted"


def test_ctrl_c_during_calibrate_leaves_the_bundle_and_no_litter(tmp_path, monkeypatch):
    from edgeexit.calibrate import pipeline

    bundle = write_bundle(tmp_path / "b", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))
    before = tree(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build_report", interrupted)
    data = str(tmp_path / "cal.npz")
    args = ["calibrate", str(bundle), "--data", data, "--max-accuracy-drop", "0.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.stderr == f"interrupted: nothing written; {bundle} unchanged\n"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("existed", [False, True])
def test_ctrl_c_during_export_says_nothing_was_written(tmp_path, monkeypatch, existed):
    edgeexit.save(digits_cnn(), tmp_path / "m.pt", example_inputs=torch.rand(2, 1, 8, 8))
    out = tmp_path / "bundle"
    if existed:
        assert (
            CliRunner().invoke(app, ["export", str(tmp_path / "m.pt"), "-o", str(out)]).exit_code
            == 0
        )
    before = tree(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgeexit.export.bundle_export.validate_bundle", interrupted)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "m.pt"), "-o", str(out)])
    assert result.exit_code == 130 and "Traceback" not in result.output
    said = "unchanged" if existed else "not created"
    assert result.stderr == f"interrupted: nothing written; {out} {said}\n"
    assert tree(tmp_path) == before


def test_checkpoint_refusal_says_how_to_opt_in(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="pass `trust_pickle`"):
        edgeexit.load(tmp_path / "whole.pt")
    assert shutil.which("edgeexit") or True


# -- created, never replaced: a path that appears during the run ---------------------------


def one_error(result) -> str:
    """The one `error:` line of a command that failed on bad input, with no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def appears(path: Path, data: bytes, wrapped):
    """``wrapped`` that first puts the user's ``data`` at ``path``: the file appears in the
    middle of the command, after its output was checked and before it is written."""

    def call(*args, **kwargs):
        path.write_bytes(data)
        return wrapped(*args, **kwargs)

    return call


def test_run_save_outputs_refuses_a_file_that_appeared_during_the_run(tmp_path, monkeypatch):
    from edgeexit.cli import run as run_cmd

    bundle = write_bundle(tmp_path / "b", load_weights())
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    out = tmp_path / "out.npy"
    monkeypatch.setattr(run_cmd, "load_data", appears(out, b"the user's", run_cmd.load_data))
    args = ["run", str(bundle), "--input", str(tmp_path / "x.npy"), "--save-outputs", str(out)]
    error = one_error(CliRunner().invoke(app, args))
    assert f"{out} appeared while edgeexit was working" in error
    assert out.read_bytes() == b"the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "out.npy", "x.npy"]  # no temp


def test_profile_refuses_a_file_that_appeared_while_it_measured(tmp_path, monkeypatch):
    from edgeexit.cli import profile as profile_cmd

    bundle = write_bundle(tmp_path / "b", load_weights())
    out = tmp_path / "p.json"
    theirs = b'{"format": "edgeexit.profile/1", "run": "another"}'  # even a profile
    wrapped = appears(out, theirs, profile_cmd.profile_bundle)
    monkeypatch.setattr(profile_cmd, "profile_bundle", wrapped)
    args = ["profile", str(bundle), "--repeats", "1", "--warmup", "0", "--rounds", "1"]
    error = one_error(CliRunner().invoke(app, [*args, "-o", str(out)]))
    assert "appeared while edgeexit was working" in error and out.read_bytes() == theirs
    monkeypatch.undo()
    out.unlink()
    for _ in range(2):  # new, then an earlier profile there at the start: replaced
        assert CliRunner().invoke(app, [*args, "-o", str(out)]).exit_code == 0
        assert files.is_profile(out)


def test_calibrate_refuses_a_plot_path_taken_during_the_run_and_keeps_the_manifest(
    tmp_path, monkeypatch
):
    from edgeexit.calibrate import pipeline

    bundle = write_bundle(tmp_path / "b", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))
    before = tree(bundle)
    plot = tmp_path / "p.png"
    monkeypatch.setattr(pipeline, "build_report", appears(plot, b"photo", pipeline.build_report))
    args = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1", "--plot", str(plot)]  # fmt: skip
    pytest.importorskip("matplotlib")
    error = one_error(CliRunner().invoke(app, args))
    assert f"{plot} appeared while edgeexit was working" in error
    assert plot.read_bytes() == b"photo" and tree(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "cal.npz", "p.png"]


def test_a_plot_created_before_a_failed_manifest_write_is_removed(tmp_path, monkeypatch):
    from edgeexit.calibrate import pipeline

    pytest.importorskip("matplotlib")
    bundle = write_bundle(tmp_path / "b", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))
    before = tree(tmp_path)

    def full_disk(*args, **kwargs):
        raise OutputError("cannot write manifest: No space left on device")

    monkeypatch.setattr(pipeline, "write_manifest", full_disk)
    args = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1", "--plot", str(tmp_path / "p.png")]  # fmt: skip
    assert "No space left" in one_error(CliRunner().invoke(app, args))
    assert tree(tmp_path) == before  # the plot claimed before the write is gone again


def test_export_refuses_a_bundle_that_appeared_at_a_new_path(tmp_path, monkeypatch):
    from edgeexit.export import bundle_export

    out = tmp_path / "bundle"

    def another_export_first(*args, **kwargs):
        write_bundle(out, load_weights())  # another process's export finished first
        return real(*args, **kwargs)

    real = bundle_export._export_segments
    monkeypatch.setattr(bundle_export, "_export_segments", another_export_first)
    with pytest.raises(OutputError, match=f"{out} appeared while edgeexit was working"):
        edgeexit.export(small_model(), torch.rand(2, 4), out)
    assert read_manifest(out).num_exits == 3  # theirs, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_save_refuses_a_file_that_appeared_while_it_serialized(tmp_path, monkeypatch):
    from edgeexit.export import checkpoint

    path = tmp_path / "m.pt"
    monkeypatch.setattr(checkpoint.torch, "save",
                        appears(path, b"%PDF-1.7", checkpoint.torch.save))  # fmt: skip
    with pytest.raises(OutputError, match="appeared while edgeexit was working"):
        edgeexit.save(digits_cnn(width=4), path, example_inputs=torch.rand(2, 1, 8, 8))
    assert path.read_bytes() == b"%PDF-1.7"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-fallback"])
def test_create_never_replaces_a_file_or_a_folder(tmp_path, monkeypatch, renameat2):
    if not renameat2:  # a platform without renameat2: a hard link for a file
        monkeypatch.setattr(files, "_renameat2", lambda a, b, flags: False)
    for kind, existing in (("file", "theirs.txt"), ("folder", "theirs")):
        new = tmp_path / f"new-{kind}"
        new.mkdir() if kind == "folder" else new.write_bytes(b"ours")
        (tmp_path / existing).mkdir() if kind == "folder" else None
        if kind == "file":
            (tmp_path / existing).write_bytes(b"theirs")
        with pytest.raises(OutputError, match="appeared while edgeexit was working"):
            files.create(new, tmp_path / existing, kind)
        assert new.exists()  # ours stays where it was, for the caller to remove
        files.create(new, tmp_path / f"made-{kind}", kind)
        assert not new.exists() and (tmp_path / f"made-{kind}").exists()
    assert (tmp_path / "theirs.txt").read_bytes() == b"theirs"
    assert list((tmp_path / "theirs").iterdir()) == []


# -- the lock spans the whole run ----------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from edgeexit import files
    with files.locked(sys.argv[1], "calibrate"):  # another process's calibrate, in effect
        print("locked", flush=True)
        sys.stdin.readline()  # until the test lets go
    """
)


@contextlib.contextmanager
def held_by_another_process(bundle: Path):
    """The bundle's lock, held by a real second process for the block."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(bundle)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.communicate("go\n", timeout=HANG_S)
    assert proc.returncode == 0


def never(*args, **kwargs):
    raise AssertionError("the export started its work on a bundle another process holds")


def test_an_export_onto_a_locked_bundle_is_refused_before_any_work(tmp_path, monkeypatch):
    from edgeexit.compile import compiler
    from edgeexit.export import bundle_export

    bundle = write_bundle(tmp_path / "b", load_weights())
    source = write_bundle(tmp_path / "src", load_weights())
    before = tree(tmp_path)
    monkeypatch.setattr(bundle_export, "trace", never)
    monkeypatch.setattr(compiler, "_compile", never)
    with held_by_another_process(bundle):
        with pytest.raises(OutputError, match="being changed by another edgeexit process"):
            edgeexit.export(small_model(), torch.rand(2, 4), bundle)
        with pytest.raises(OutputError, match="being changed by another edgeexit process"):
            compiler.compile_bundle(source, bundle, "rpi4")
    assert tree(tmp_path) == before


def test_a_calibrate_starting_during_an_export_onto_its_bundle_is_refused(tmp_path, monkeypatch):
    from edgeexit.export import bundle_export

    bundle = write_bundle(tmp_path / "b", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))
    args = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1"]  # fmt: skip
    seen = []

    def calibrate_meanwhile(*a, **kw):
        seen.append(CliRunner().invoke(app, args))  # in the middle of the export
        return real(*a, **kw)

    real = bundle_export._export_segments
    monkeypatch.setattr(bundle_export, "_export_segments", calibrate_meanwhile)
    edgeexit.export(small_model(), torch.rand(2, 4), bundle)
    assert "being changed by another edgeexit process" in one_error(seen[0])
    manifest = read_manifest(bundle)
    assert manifest.num_exits == 2 and "calibration" not in manifest.extra  # the export's


PAUSED_CALIBRATE_GENERATION = textwrap.dedent(
    """
    import sys
    from edgeexit.cli import main
    from edgeexit.generation import calibrate

    real = calibrate._choose_thresholds
    def paused(*args, **kwargs):  # in the middle of its measurements
        print("measuring", flush=True)
        sys.stdin.readline()  # until the test lets it go on
        return real(*args, **kwargs)
    calibrate._choose_thresholds = paused
    sys.argv = ["edgeexit", "calibrate-generation", *sys.argv[1:]]
    main()
    """
)


@pytest.fixture
def decoder_bundle(tmp_path):
    from edgeexit.export.decoder_export import export_decoder
    from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder

    torch.manual_seed(0)
    config = DecoderConfig(dim=16, heads=2, layers=2, hidden=32, exit_after=(1, 2),
                           max_positions=24, vocab_size=20, eos_token_id=None)  # fmt: skip
    export_decoder(MultiExitDecoder(config).eval(), tmp_path / "decoder")
    (tmp_path / "prompts.json").write_text(json.dumps([[1, 2, 3], [4, 5], [6], [7, 8, 9]]))
    return tmp_path / "decoder", MultiExitDecoder(config).eval()


def test_calibrate_generation_holds_the_lock_from_start_to_write(decoder_bundle, monkeypatch):
    """Two overlapping runs: the second is refused at once with one line (it used to measure
    too, and both exited 0 with one result lost); an export onto the bundle meanwhile is
    refused before any work (it used to succeed, and the new model then carried settings
    measured on the old one); the first run's result is recorded."""
    from edgeexit.export import decoder_export

    bundle, other_model = decoder_bundle
    prompts = bundle.parent / "prompts.json"
    args = [str(bundle), "--prompts", str(prompts), "-n", "2", "--min-agreement", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", PAUSED_CALIBRATE_GENERATION, *args], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert first.stdout.readline().strip() == "measuring", first.stderr.read()
        graphs = tree(bundle)
        second = CliRunner().invoke(app, ["calibrate-generation", *args])
        assert "being changed by another edgeexit process" in one_error(second)
        monkeypatch.setattr(decoder_export, "export_graph", never)
        with pytest.raises(OutputError, match="being changed by another edgeexit process"):
            decoder_export.export_decoder(other_model, bundle)
        assert tree(bundle) == graphs
    finally:
        out, err = first.communicate("go\n", timeout=HANG_S)
    assert first.returncode == 0, err
    recorded = json.loads((bundle / "manifest.json").read_text())["generation"]
    assert recorded["self_speculative"] and len(recorded["early_exit"]) == 1
    assert f"recorded in {bundle}/manifest.json" in out


def test_calibrate_generation_records_nothing_if_the_graphs_changed_under_it(
    decoder_bundle, monkeypatch
):
    """A writer that ignores the lock (an older edgeexit, a copy by hand) replaced the
    graphs mid-run: the settings measured on the old ones are not written onto the new."""
    from edgeexit.errors import CalibrationError
    from edgeexit.generation import calibrate

    bundle, _ = decoder_bundle
    doc = json.loads((bundle / "manifest.json").read_text())

    def replaced_meanwhile(*args, **kwargs):
        changed = {**doc, "head": {**doc["head"], "sha256": "0" * 64}}
        (bundle / "manifest.json").write_text(json.dumps(changed))
        return real(*args, **kwargs)

    real = calibrate._choose_thresholds
    monkeypatch.setattr(calibrate, "_choose_thresholds", replaced_meanwhile)
    with pytest.raises(CalibrationError, match="graphs changed while they were measured"):
        calibrate.calibrate_generation(bundle, [[1, 2, 3]], max_new_tokens=2, threads=1)
    assert not json.loads((bundle / "manifest.json").read_text())["generation"]


def test_the_demo_does_not_write_into_a_folder_that_appeared_after_its_check(tmp_path, monkeypatch):
    from edgeexit.examples import demo

    out = tmp_path / "demo"

    def then_the_users_folder(*args, **kwargs):
        checked = real(*args, **kwargs)
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
        return checked

    real = files.check_output
    monkeypatch.setattr(demo.files, "check_output", then_the_users_folder)
    with pytest.raises(OutputError, match="cannot write demo folder .*File exists"):
        demo._demo_folder(demo.DemoOptions(out_dir=out))
    assert tree(out) == {"thesis.tex": b"mine"}


def test_calibrate_writes_nothing_into_a_bundle_swapped_in_around_it(tmp_path, monkeypatch):
    """The folder holding the bundle is replaced mid-run (a demo folder re-made around it,
    a copy by hand): its lock was on the old folder, and the path now names another bundle.
    The thresholds measured on the old one are not written into the new one."""
    from edgeexit.calibrate import pipeline

    demo = tmp_path / "demo"
    write_bundle(demo / "bundle", load_weights())
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((30, 1, 8, 8), np.float32))

    def swapped_meanwhile(*args, **kwargs):
        os.rename(demo, tmp_path / "old-demo")
        shutil.copytree(tmp_path / "old-demo", demo)
        return real(*args, **kwargs)

    real = pipeline.build_report
    monkeypatch.setattr(pipeline, "build_report", swapped_meanwhile)
    args = ["calibrate", str(demo / "bundle"), "--data", str(tmp_path / "cal.npz"),
            "--max-accuracy-drop", "0.1"]  # fmt: skip
    error = one_error(CliRunner().invoke(app, args))
    assert "was replaced by another process during this run; nothing was written" in error
    assert tree(demo) == tree(tmp_path / "old-demo")  # neither got the thresholds
    assert "calibration" not in read_manifest(demo / "bundle").extra
