"""Every boundary of the CLI against bad input: manifests, data files, device profiles,
target files, checkpoints, output paths and option values.

Each case builds one bad input in a fresh copy of a small world (a bundle, data, a profile,
a checkpoint, a target file, a user's own files) and runs one command. Every case must end
with the expected exit code (1 for bad input, 2 for a malformed option), exactly one
``error:`` line on stderr naming the problem, no traceback, every file that was there
byte-identical with the same mode, and no file added or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from fixtures.targets_digits import load_weights, write_bundle
from typer.testing import CliRunner

from edgeexit.cli import app


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # builds the bad input in the world; returns argv
    code: int
    message: str  # must appear in the error line


# -- the world ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    import torch

    from edgeexit import save
    from edgeexit.examples.models import digits_cnn
    from edgeexit.measure.profiling import profile_bundle

    world = tmp_path_factory.mktemp("world")
    write_bundle(world / "bundle", load_weights())
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    np.savez(world / "cal.npz", x=x, y=y)
    np.save(world / "x.npy", x[:4])
    profile_bundle(world / "bundle", "x86-cpu", repeats=2, warmup=0, rounds=1).save(
        world / "profile.json"
    )
    torch.manual_seed(0)
    save(digits_cnn(width=4), world / "model.pt", example_inputs=torch.rand(2, 1, 8, 8))
    (world / "board.toml").write_text(
        'name = "board"\narch = "x86_64"\nproviders = ["CPUExecutionProvider"]\n'
    )
    (world / "notes.txt").write_text("my notes\n")
    (world / "mine").mkdir()
    (world / "mine" / "thesis.tex").write_text("\\documentclass{article}\n")
    return world


@pytest.fixture
def world(pristine, tmp_path, monkeypatch):
    copy = tmp_path / "world"
    shutil.copytree(pristine, copy, symlinks=True)
    monkeypatch.chdir(copy)  # "." is the world: relative outputs land in it
    return copy


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = os.lstat(path).st_mode
        if path.is_symlink():
            state[rel] = ("link:" + os.readlink(path), mode)
        elif path.is_file():
            state[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), mode)
        else:
            state[rel] = ("dir", mode)
    return state


# -- helpers to build bad inputs ------------------------------------------------------------


def manifest(world: Path) -> dict:
    return json.loads((world / "bundle" / "manifest.json").read_text())


def put_manifest(world: Path, doc: dict | str | bytes) -> None:
    path = world / "bundle" / "manifest.json"
    if isinstance(doc, dict):
        doc = json.dumps(doc)
    path.write_bytes(doc.encode() if isinstance(doc, str) else doc)


def edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(world: Path) -> None:
        doc = manifest(world)
        change(doc)
        put_manifest(world, doc)

    return apply


def on(command: str, mutate: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """Mutate the world, then run ``command`` on the bundle with good other inputs."""

    def setup(world: Path) -> list[str]:
        mutate(world)
        return {
            "run": ["run", "bundle", "--input", "x.npy"],
            "bench": ["bench", "bundle", "--data", "cal.npz", "--rounds", "1"],
            "calibrate": [
                "calibrate",
                "bundle",
                "--data",
                "cal.npz",
                "--max-accuracy-drop",
                "0.05",
            ],  # fmt: skip
            "profile": ["profile", "bundle", "--repeats", "1", "--warmup", "0", "--rounds", "1"],
        }[command]

    return setup


def argv(*args: str, mutate: Callable[[Path], None] | None = None) -> Callable[[Path], list]:
    def setup(world: Path) -> list[str]:
        if mutate is not None:
            mutate(world)
        return list(args)

    return setup


def setitem(path: tuple, value) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def delitem(path: tuple) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def make(world: Path) -> None:
        (world / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return make


def npz(name: str, **arrays) -> Callable[[Path], None]:
    def make(world: Path) -> None:
        np.savez(world / name, **arrays)

    return make


def damaged_npz(world: Path) -> None:
    data = bytearray((world / "cal.npz").read_bytes())
    start = data.find(b"x.npy") + 200  # inside the first member's stored bytes
    data[start : start + 8] = b"\xff" * 8
    (world / "bad.npz").write_bytes(bytes(data))


def truncated_npz(world: Path) -> None:
    (world / "bad.npz").write_bytes((world / "cal.npz").read_bytes()[:300])


def object_npz(world: Path) -> None:
    with zipfile.ZipFile(world / "bad.npz", "w") as z, z.open("x.npy", "w") as f:
        np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def profile_doc(world: Path) -> dict:
    return json.loads((world / "profile.json").read_text())


def edit_profile(change: Callable[[dict], object], raw: str | None = None) -> Callable:
    def apply(world: Path) -> None:
        if raw is not None:
            (world / "bad.json").write_text(raw)
            return
        doc = profile_doc(world)
        change(doc)
        (world / "bad.json").write_text(json.dumps(doc))

    return apply


def calibrate_with_profile(mutate: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    return argv(
        "calibrate", "bundle", "--data", "cal.npz", "--max-accuracy-drop", "0.05",
        "--profile", "bad.json", mutate=mutate,
    )  # fmt: skip


def toml(text: str) -> Callable[[Path], None]:
    return write("bad.toml", text)


def run_on_target(mutate: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    return argv("run", "bundle", "--input", "x.npy", "--target", "bad.toml", mutate=mutate)


def checkpoint(doc_change: Callable[[dict], object]) -> Callable[[Path], None]:
    def make(world: Path) -> None:
        import torch

        doc = torch.load(world / "model.pt", weights_only=True)
        doc_change(doc)
        torch.save(doc, world / "bad.pt")

    return make


def export_bad(mutate: Callable[[Path], None], *more: str) -> Callable[[Path], list[str]]:
    return argv("export", "bad.pt", "-o", "out", *more, mutate=mutate)


def evil_pickle(world: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {world / 'PWNED'}",))

    torch.save({"format": "edgeexit.checkpoint/1", "payload": Evil()}, world / "bad.pt")


def external_data(listed: bool, tamper: bool = False) -> Callable[[Path], None]:
    def make(world: Path) -> None:
        import onnx

        bundle = world / "bundle"
        model = onnx.load(bundle / "segment_01.onnx")
        onnx.save(
            model, bundle / "segment_01.onnx", save_as_external_data=True,
            location="weights.bin", size_threshold=0,
        )  # fmt: skip
        doc = manifest(world)
        seg = doc["segments"][1]
        seg["sha256"] = hashlib.sha256((bundle / "segment_01.onnx").read_bytes()).hexdigest()
        if listed:
            digest = hashlib.sha256((bundle / "weights.bin").read_bytes()).hexdigest()
            seg["external_data"] = [{"file": "weights.bin", "sha256": digest}]
        put_manifest(world, doc)
        if tamper:
            data = bytearray((bundle / "weights.bin").read_bytes())
            data[0] ^= 0xFF
            (bundle / "weights.bin").write_bytes(bytes(data))

    return make


def link(name: str, to: str) -> Callable[[Path], None]:
    def make(world: Path) -> None:
        os.symlink(to, world / name)

    return make


def segment_link(world: Path) -> None:
    bundle = world / "bundle"
    os.replace(bundle / "segment_02.onnx", world / "outside.onnx")
    os.symlink(world / "outside.onnx", bundle / "segment_02.onnx")


# -- the cases ------------------------------------------------------------------------------

M = "manifest"
CASES = [
    # manifests, through run (and a few through the other commands)
    Case("manifest-not-utf8", on("run", lambda w: put_manifest(w, b"\xff\xfe{")), 1, "not UTF-8"),
    Case(
        "manifest-not-json", on("run", lambda w: put_manifest(w, "{nope")), 1, "not readable JSON"
    ),
    Case("manifest-list", on("run", lambda w: put_manifest(w, "[1]")), 1, "expected an object"),
    Case("manifest-empty", on("run", lambda w: put_manifest(w, "")), 1, "not readable JSON"),
    Case("manifest-format", on("run", edit(setitem(("format",), "x/9"))), 1, "format is 'x/9'"),
    Case("manifest-no-format", on("run", edit(delitem(("format",)))), 1, "format is None"),
    Case(
        "inputs-not-list", on("run", edit(setitem(("inputs",), {}))), 1, "'inputs' must be a list"
    ),
    Case("inputs-empty", on("run", edit(setitem(("inputs",), []))), 1, "lists no inputs"),
    Case("input-name-int", on("run", edit(setitem(("inputs", 0, "name"), 3))), 1, "name must be"),
    Case("input-dtype", on("run", edit(setitem(("inputs", 0, "dtype"), "q8"))), 1, "dtype is 'q8'"),
    Case("input-dtype-int", on("run", edit(setitem(("inputs", 0, "dtype"), 1))), 1, "dtype must"),
    Case(
        "input-shape-str",
        on("run", edit(setitem(("inputs", 0, "shape"), "1x8"))),
        1,
        "must be a list",
    ),
    Case(
        "input-no-batch",
        on("run", edit(setitem(("inputs", 0, "shape"), [2, 1, 8, 8]))),
        1,
        "expected 'batch'",
    ),
    Case(
        "input-neg-dim",
        on("run", edit(setitem(("inputs", 0, "shape"), ["batch", -1, 8, 8]))),
        1,
        "positive sizes",
    ),
    Case(
        "input-bool-dim",
        on("run", edit(setitem(("inputs", 0, "shape"), ["batch", True, 8, 8]))),
        1,
        "positive sizes",
    ),
    Case("input-entry-str", on("run", edit(setitem(("inputs", 0), "x"))), 1, "must be an object"),
    Case("segments-empty", on("run", edit(setitem(("segments",), []))), 1, "no segments"),
    Case(
        "segments-null",
        on("run", edit(setitem(("segments",), None))),
        1,
        "'segments' must be a list",
    ),
    Case("file-int", on("run", edit(setitem(("segments", 0, "file"), 7))), 1, "file must be"),
    Case(
        "file-parent",
        on("run", edit(setitem(("segments", 0, "file"), "../x.onnx"))),
        1,
        "plain file name",
    ),
    Case(
        "file-absolute",
        on("run", edit(setitem(("segments", 0, "file"), "/etc/passwd.onnx"))),
        1,
        "plain file name",
    ),
    Case(
        "file-subdir",
        on("run", edit(setitem(("segments", 0, "file"), "a/b.onnx"))),
        1,
        "plain file name",
    ),
    Case(
        "file-backslash",
        on("run", edit(setitem(("segments", 0, "file"), "..\\x.onnx"))),
        1,
        "plain file name",
    ),
    Case(
        "file-dotdot", on("run", edit(setitem(("segments", 0, "file"), ".."))), 1, "plain file name"
    ),
    Case(
        "file-not-onnx",
        on("run", edit(setitem(("segments", 0, "file"), "manifest.json"))),
        1,
        "not an .onnx",
    ),
    Case(
        "sha-short",
        on("run", edit(setitem(("segments", 0, "sha256"), "abc"))),
        1,
        "64 lowercase hex",
    ),
    Case(
        "sha-wrong",
        on("run", edit(setitem(("segments", 0, "sha256"), "0" * 64))),
        1,
        "does not match its sha256",
    ),
    Case(
        "segment-missing",
        on("run", lambda w: (w / "bundle" / "segment_01.onnx").unlink()),
        1,
        "is missing",
    ),
    Case(
        "segment-dir",
        on(
            "run",
            lambda w: (
                (w / "bundle" / "segment_01.onnx").unlink(),
                (w / "bundle" / "segment_01.onnx").mkdir(),
            ),
        ),
        1,
        "not a regular file",
    ),
    Case("segment-symlink-out", on("run", segment_link), 1, "symbolic link"),
    Case(
        "segment-tampered",
        on("run", lambda w: (w / "bundle" / "segment_01.onnx").open("ab").write(b"\0")),
        1,
        "does not match its sha256",
    ),
    Case(
        "external-unlisted",
        on("run", external_data(listed=False)),
        1,
        "does not list with a sha256",
    ),
    Case(
        "external-tampered",
        on("run", external_data(listed=True, tamper=True)),
        1,
        "do not match their sha256",
    ),
    Case(
        "seg-inputs-int",
        on("run", edit(setitem(("segments", 1, "inputs"), [1]))),
        1,
        "non-empty strings",
    ),
    Case(
        "seg-carry-count",
        on("run", edit(setitem(("segments", 0, "carry"), ["a", "b"]))),
        1,
        "carries 2",
    ),
    Case(
        "seg0-inputs",
        on("run", edit(setitem(("segments", 0, "inputs"), ["y"]))),
        1,
        "are not the model inputs",
    ),
    Case(
        "last-carries",
        on("run", edit(setitem(("segments", 2, "carry"), ["z"]))),
        1,
        "last segment carries",
    ),
    Case("score-missing", on("run", edit(delitem(("segments", 0, "score")))), 1, "score must be"),
    Case(
        "score-wrong-name",
        on("run", edit(setitem(("segments", 0, "score"), "nope"))),
        1,
        "has no output 'nope'",
    ),
    Case("criterion", on("run", edit(setitem(("criterion",), "vibes"))), 1, "criterion is 'vibes'"),
    Case(
        "criterion-params",
        on("run", edit(setitem(("criterion_params",), [1]))),
        1,
        "criterion_params must",
    ),
    Case(
        "thresholds-count",
        on("run", edit(setitem(("thresholds",), [0.5]))),
        1,
        "1 thresholds for 3",
    ),
    Case(
        "threshold-str",
        on("run", edit(setitem(("thresholds", 0), "0.5"))),
        1,
        "thresholds[0] is '0.5'",
    ),
    Case(
        "threshold-bool",
        on("run", edit(setitem(("thresholds", 0), True))),
        1,
        "thresholds[0] is True",
    ),
    Case(
        "threshold-nan",
        on("run", lambda w: put_manifest(w, json.dumps(manifest(w)).replace("0.9", "NaN", 1))),
        1,
        "NaN is not a JSON number",
    ),
    Case(
        "threshold-infinity",
        on(
            "run", lambda w: put_manifest(w, json.dumps(manifest(w)).replace("0.9", "-Infinity", 1))
        ),
        1,
        "-Infinity is not a JSON number",
    ),
    Case(
        "threshold-list",
        on("run", edit(setitem(("thresholds", 0), [0.5]))),
        1,
        "thresholds[0] is [0.5]",
    ),
    Case(
        "thresholds-null",
        on("run", edit(setitem(("thresholds",), None))),
        1,
        "'thresholds' must be a list",
    ),
    Case(
        "manifest-dir",
        on(
            "run",
            lambda w: (
                (w / "bundle" / "manifest.json").unlink(),
                (w / "bundle" / "manifest.json").mkdir(),
            ),
        ),
        1,
        "not a regular file",
    ),
    Case(
        "manifest-symlink",
        on(
            "run",
            lambda w: (
                (w / "bundle" / "manifest.json").rename(w / "m.json"),
                os.symlink(w / "m.json", w / "bundle" / "manifest.json"),
            ),
        ),
        1,
        "symbolic link",
    ),
    Case("bundle-missing", argv("run", "nope", "--input", "x.npy"), 1, "not a directory"),
    Case("bundle-is-file", argv("run", "notes.txt", "--input", "x.npy"), 1, "not a directory"),
    Case(
        "bench-bad-manifest", on("bench", edit(setitem(("thresholds", 1), "x"))), 1, "thresholds[1]"
    ),
    Case(
        "calibrate-bad-manifest",
        on("calibrate", edit(setitem(("segments", 1, "file"), "/x.onnx"))),
        1,
        "plain file name",
    ),
    Case("profile-bad-manifest", on("profile", lambda w: put_manifest(w, b"\x80")), 1, "not UTF-8"),
    # data files
    Case("data-missing", argv("run", "bundle", "--input", "nope.npz"), 1, "does not exist"),
    Case("data-dir", argv("run", "bundle", "--input", "mine"), 1, "is a directory"),
    Case("data-text", argv("run", "bundle", "--input", "notes.txt"), 1, "not a .npy or .npz"),
    Case(
        "data-truncated",
        argv("run", "bundle", "--input", "bad.npz", mutate=truncated_npz),
        1,
        "bad.npz",
    ),
    Case(
        "data-bad-crc",
        argv("run", "bundle", "--input", "bad.npz", mutate=damaged_npz),
        1,
        "damaged .npz",
    ),
    Case(
        "data-object",
        argv("run", "bundle", "--input", "bad.npz", mutate=object_npz),
        1,
        "Python objects",
    ),
    Case(
        "data-no-x",
        argv("run", "bundle", "--input", "bad.npz", mutate=npz("bad.npz", z=np.zeros(3))),
        1,
        "has no array 'x'",
    ),
    Case(
        "data-rank",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((3, 8), np.float32)),
        ),
        1,
        "expected rank 4",
    ),
    Case(
        "data-shape",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 7), np.float32)),
        ),
        1,
        "has shape (3, 1, 8, 7)",
    ),
    Case(
        "data-strings",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz("bad.npz", x=np.full((3, 1, 8, 8), "a")),
        ),
        1,
        "expected float32",
    ),
    Case(
        "data-complex",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 8), np.complex64)),
        ),
        1,
        "expected float32",
    ),
    Case(
        "data-empty",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((0, 1, 8, 8), np.float32)),
        ),
        1,
        "holds no samples",
    ),
    Case(
        "data-nan",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz(
                "bad.npz",
                x=np.where(np.arange(4)[:, None, None, None] == 2, np.nan, 0.5).astype(np.float32)
                * np.ones((4, 1, 8, 8), np.float32),
            ),
        ),
        1,
        "NaN or inf in 1 sample(s) (rows 2)",
    ),
    Case(
        "data-inf",
        argv(
            "bench",
            "bundle",
            "--data",
            "bad.npz",
            mutate=npz("bad.npz", x=np.full((3, 1, 8, 8), np.inf, np.float32)),
        ),
        1,
        "rows 0, 1, 2",
    ),
    Case(
        "data-overflow",
        argv(
            "run",
            "bundle",
            "--input",
            "bad.npz",
            mutate=npz("bad.npz", x=np.full((2, 1, 8, 8), 1e300)),
        ),
        1,
        "NaN or inf",
    ),
    Case(
        "labels-2d",
        argv(
            "bench",
            "bundle",
            "--data",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.zeros((3, 2), int)),
        ),
        1,
        "labels 'y' have shape",
    ),
    Case(
        "labels-float",
        argv(
            "bench",
            "bundle",
            "--data",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.zeros(3)),
        ),
        1,
        "expected integers",
    ),
    Case(
        "labels-short",
        argv(
            "calibrate",
            "bundle",
            "--data",
            "bad.npz",
            "--max-accuracy-drop",
            "0.1",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.zeros(2, int)),
        ),
        1,
        "labels 'y' have shape",
    ),
    Case(
        "labels-out-of-range",
        argv(
            "calibrate",
            "bundle",
            "--data",
            "bad.npz",
            "--max-accuracy-drop",
            "0.1",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, 10, 3])),
        ),
        1,
        "outside the model's classes; expected 0..9",
    ),
    Case(
        "labels-negative",
        argv(
            "bench",
            "bundle",
            "--data",
            "bad.npz",
            mutate=npz("bad.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, -1, 3])),
        ),
        1,
        "label -1",
    ),
    Case(
        "calibrate-data-missing",
        argv("calibrate", "bundle", "--data", "nope.npz", "--max-accuracy-drop", "0.1"),
        1,
        "does not exist",
    ),
    Case(
        "profile-data-bad",
        argv("profile", "bundle", "--data", "notes.txt"),
        1,
        "not a .npy or .npz",
    ),
    # device profiles
    Case("profile-missing", calibrate_with_profile(lambda w: None), 1, "does not exist"),
    Case(
        "profile-dir",
        calibrate_with_profile(lambda w: (w / "bad.json").mkdir()),
        1,
        "is a directory",
    ),
    Case(
        "profile-not-json",
        calibrate_with_profile(edit_profile(None, raw="{oops")),
        1,
        "not readable JSON",
    ),
    Case(
        "profile-not-utf8",
        calibrate_with_profile(lambda w: (w / "bad.json").write_bytes(b"\xff")),
        1,
        "not UTF-8",
    ),
    Case(
        "profile-nan",
        calibrate_with_profile(
            lambda w: (w / "bad.json").write_text(
                (w / "profile.json").read_text().replace('"median": ', '"median": NaN, "x": ', 1)
            )
        ),
        1,
        "NaN is not a JSON number",
    ),
    Case(
        "profile-negative",
        calibrate_with_profile(
            edit_profile(lambda d: d["exits"][0]["latency_ms"].update(robust_mean=-1.0))
        ),
        1,
        "expected a finite number >= 0",
    ),
    Case(
        "profile-string-latency",
        calibrate_with_profile(
            edit_profile(lambda d: d["segments"][0]["latency_ms"].update(median="fast"))
        ),
        1,
        "must be a number",
    ),
    Case(
        "profile-format",
        calibrate_with_profile(edit_profile(lambda d: d.update(format="x"))),
        1,
        "format is 'x'",
    ),
    Case(
        "profile-missing-key",
        calibrate_with_profile(edit_profile(lambda d: d.pop("segments"))),
        1,
        "missing key 'segments'",
    ),
    Case(
        "profile-batch-zero",
        calibrate_with_profile(edit_profile(lambda d: d.update(batch_size=0))),
        1,
        "batch_size must be an integer >= 1",
    ),
    Case(
        "profile-energy-negative",
        calibrate_with_profile(edit_profile(lambda d: d["exits"][1].update(energy_mj=-2))),
        1,
        "energy_mj is -2",
    ),
    Case(
        "profile-other-bundle",
        calibrate_with_profile(edit_profile(lambda d: d["segments"][0].update(sha256="0" * 64))),
        1,
        "measured on another bundle",
    ),
    Case(
        "profile-latency-not-object",
        calibrate_with_profile(edit_profile(lambda d: d["exits"][0].update(latency_ms=3))),
        1,
        "latency_ms must be an object",
    ),
    Case(
        "profile-list", calibrate_with_profile(edit_profile(None, raw="[]")), 1, "format is 'list'"
    ),
    # target files
    Case(
        "target-missing",
        argv("run", "bundle", "--input", "x.npy", "--target", "nope.toml"),
        1,
        "does not exist",
    ),
    Case("target-dir", run_on_target(lambda w: (w / "bad.toml").mkdir()), 1, "is a directory"),
    Case("target-invalid", run_on_target(toml("name = ")), 1, "not valid TOML"),
    Case("target-not-utf8", run_on_target(write("bad.toml", b"name = '\xff'")), 1, "not UTF-8"),
    Case(
        "target-unknown-key",
        run_on_target(
            toml('name="b"\narch="x86_64"\nproviders=["CPUExecutionProvider"]\ncolour="red"\n')
        ),
        1,
        "unknown key 'colour'",
    ),
    Case(
        "target-no-arch",
        run_on_target(toml('name="b"\nproviders=["CPUExecutionProvider"]\n')),
        1,
        "missing required key 'arch'",
    ),
    Case(
        "target-providers-str",
        run_on_target(toml('name="b"\narch="x86_64"\nproviders="CPU"\n')),
        1,
        "'providers' must be a non-empty list",
    ),
    Case(
        "target-threads",
        run_on_target(
            toml(
                'name="b"\narch="x86_64"\nproviders=["CPUExecutionProvider"]\nintra_op_threads=-1\n'
            )
        ),
        1,
        "intra_op_threads must be a positive integer",
    ),
    Case(
        "target-arch",
        run_on_target(toml('name="b"\narch="z80"\nproviders=["CPUExecutionProvider"]\n')),
        1,
        "arch 'z80' is not one of",
    ),
    Case(
        "target-power",
        run_on_target(
            toml('name="b"\narch="x86_64"\nproviders=["CPUExecutionProvider"]\nactive_power_w=-3\n')
        ),
        1,
        "active_power_w must be a number of watts >= 0",
    ),
    Case(
        "target-name-int",
        run_on_target(toml('name=5\narch="x86_64"\nproviders=["CPUExecutionProvider"]\n')),
        1,
        "'name' must be a non-empty string",
    ),
    Case(
        "targets-cmd-dir",
        argv("targets", "mine.toml", mutate=lambda w: (w / "mine.toml").mkdir()),
        1,
        "is a directory",
    ),
    # checkpoints (and code that a model file must never get to run)
    Case("ckpt-missing", argv("export", "nope.pt", "-o", "out"), 1, "does not exist"),
    Case("ckpt-dir", argv("export", "mine", "-o", "out"), 1, "is a directory"),
    Case("ckpt-junk", export_bad(write("bad.pt", b"\x00junk")), 1, "is not a PyTorch checkpoint"),
    Case("ckpt-evil-reduce", export_bad(evil_pickle), 1, "holds pickled code"),
    Case(
        "ckpt-os-system",
        export_bad(
            checkpoint(
                lambda d: d.update(factory="os:system", factory_kwargs={"command": "touch PWNED"})
            )
        ),
        1,
        "will not call it",
    ),
    Case(
        "ckpt-subprocess",
        export_bad(
            checkpoint(
                lambda d: d.update(
                    factory="subprocess:run", factory_kwargs={"args": ["touch", "PWNED"]}
                )
            )
        ),
        1,
        "will not call it",
    ),
    Case(
        "ckpt-exec",
        export_bad(
            checkpoint(
                lambda d: d.update(
                    factory="builtins:exec", factory_kwargs={"source": "open('PWNED','w')"}
                )
            )
        ),
        1,
        "will not call it",
    ),
    Case(
        "ckpt-no-factory",
        export_bad(checkpoint(lambda d: d.pop("factory"))),
        1,
        "'factory' must be a string",
    ),
    Case(
        "ckpt-kwargs-list",
        export_bad(checkpoint(lambda d: d.update(factory_kwargs=[1]))),
        1,
        "'factory_kwargs' must be a dict",
    ),
    Case(
        "ckpt-not-importable",
        export_bad(checkpoint(lambda d: d.update(factory="no_such_pkg:build"))),
        1,
        "edgeexit imports no module a model file names",
    ),
    Case(
        "ckpt-state-mismatch",
        export_bad(checkpoint(lambda d: d["state_dict"].popitem())),
        1,
        "could not rebuild the model",
    ),
    Case(
        "ckpt-not-ours",
        export_bad(checkpoint(lambda d: d.update(format="other"))),
        1,
        "not an edgeexit checkpoint",
    ),
    Case(
        "ckpt-no-examples",
        export_bad(checkpoint(lambda d: d.update(example_inputs=[]))),
        1,
        "'example_inputs' must be",
    ),
    Case(
        "ckpt-kwargs-wrong",
        export_bad(checkpoint(lambda d: d.update(factory_kwargs={"colour": 1}))),
        1,
        "could not rebuild the model",
    ),
    # output paths: nothing that is not ours is replaced
    Case("export-into-cwd", argv("export", "model.pt", "-o", "."), 1, "is the working directory"),
    Case("export-into-parent", argv("export", "model.pt", "-o", ".."), 1, "holds it"),
    Case(
        "export-onto-folder",
        argv("export", "model.pt", "-o", "mine"),
        1,
        "exists and is not an edgeexit bundle",
    ),
    Case(
        "export-onto-file",
        argv("export", "model.pt", "-o", "notes.txt"),
        1,
        "is a file, not an edgeexit bundle",
    ),
    Case(
        "export-onto-model",
        argv("export", "model.pt", "-o", "model.pt"),
        1,
        "is an input of this command",
    ),
    Case(
        "export-onto-symlink",
        argv("export", "model.pt", "-o", "ln", mutate=link("ln", "mine")),
        1,
        "is a symbolic link",
    ),
    Case(
        "export-under-a-file",
        argv("export", "model.pt", "-o", "notes.txt/b"),
        1,
        "notes.txt is a file, not a folder",
    ),
    Case(
        "export-holding-calib",
        argv(
            "export",
            "model.pt",
            "-o",
            "data",
            "--target",
            "rpi4",
            "--calib-data",
            "data/c.npz",
            mutate=lambda w: (
                (w / "data").mkdir(),
                shutil.copy(w / "cal.npz", w / "data" / "c.npz"),
            ),
        ),
        1,
        "holds one",
    ),
    Case(
        "profile-out-dir",
        argv("profile", "bundle", "--repeats", "1", "-o", "mine"),
        1,
        "is a directory",
    ),
    Case(
        "profile-out-missing-folder",
        argv("profile", "bundle", "--repeats", "1", "-o", "no/p.json"),
        1,
        "folder no does not exist",
    ),
    Case(
        "profile-out-not-ours",
        argv("profile", "bundle", "--repeats", "1", "-o", "notes.txt"),
        1,
        "exists and is not an edgeexit profile",
    ),
    Case(
        "profile-out-bundle",
        argv("profile", "bundle", "--repeats", "1", "-o", "bundle"),
        1,
        "is an input",
    ),
    Case(
        "plot-not-ours",
        argv(
            "calibrate",
            "bundle",
            "--data",
            "cal.npz",
            "--max-accuracy-drop",
            "0.05",
            "--plot",
            "notes.txt",
        ),
        1,
        "is not a plot edgeexit wrote",
    ),
    Case(
        "plot-missing-folder",
        argv(
            "calibrate",
            "bundle",
            "--data",
            "cal.npz",
            "--max-accuracy-drop",
            "0.05",
            "--plot",
            "no/p.png",
        ),
        1,
        "folder no does not exist",
    ),
    Case(
        "plot-dir",
        argv(
            "calibrate",
            "bundle",
            "--data",
            "cal.npz",
            "--max-accuracy-drop",
            "0.05",
            "--plot",
            "mine",
        ),
        1,
        "is a directory",
    ),
    Case(
        "opt-latency-ns",
        argv(
            "calibrate", "bundle", "--data", "cal.npz", "--target-latency", "1ns", "--plot", "p.png"
        ),
        2,
        "cannot read latency",
    ),
    Case(
        "plot-onto-data",
        argv(
            "calibrate",
            "bundle",
            "--data",
            "cal.npz",
            "--max-accuracy-drop",
            "0.05",
            "--plot",
            "cal.npz",
        ),
        1,
        "is an input",
    ),
    Case(
        "demo-onto-folder",
        argv("demo", "-o", "mine", "--model", "model.pt", "--data", "cal.npz"),
        1,
        "exists and is not an edgeexit demo folder",
    ),
    Case(
        "demo-onto-file",
        argv("demo", "-o", "notes.txt", "--model", "model.pt", "--data", "cal.npz"),
        1,
        "is a file",
    ),
    Case(
        "demo-onto-cwd",
        argv("demo", "-o", ".", "--model", "model.pt", "--data", "cal.npz"),
        1,
        "working directory",
    ),
    # option values: usage errors, exit 2
    Case(
        "opt-criterion",
        argv("export", "model.pt", "-o", "out", "--criterion", "foo"),
        2,
        "'foo' is not one of 'confidence', 'margin'",
    ),
    Case(
        "opt-latency-abc",
        argv("calibrate", "bundle", "--data", "cal.npz", "--target-latency", "abc"),
        2,
        "cannot read latency 'abc'",
    ),
    Case(
        "opt-latency-neg",
        argv("calibrate", "bundle", "--data", "cal.npz", "--target-latency", "-1ms"),
        2,
        "cannot read latency '-1ms'",
    ),
    Case(
        "opt-latency-nan",
        argv("calibrate", "bundle", "--data", "cal.npz", "--target-latency", "nanms"),
        2,
        "cannot read latency",
    ),
    Case(
        "opt-p95-unit",
        argv("calibrate", "bundle", "--data", "cal.npz", "--target-p95-latency", "4mJ"),
        2,
        "cannot read latency '4mJ'",
    ),
    Case(
        "opt-energy-unit",
        argv("calibrate", "bundle", "--data", "cal.npz", "--target-energy", "4ms"),
        2,
        "cannot read energy '4ms'",
    ),
    Case(
        "opt-drop-2",
        argv("calibrate", "bundle", "--data", "cal.npz", "--max-accuracy-drop", "2"),
        2,
        "is not an accuracy drop: expected a fraction in [0, 1)",
    ),
    Case(
        "opt-drop-nan",
        argv("calibrate", "bundle", "--data", "cal.npz", "--max-accuracy-drop", "nan"),
        2,
        "is not a finite number",
    ),
    Case(
        "opt-drop-text",
        argv("calibrate", "bundle", "--data", "cal.npz", "--max-accuracy-drop", "one"),
        2,
        "is not a number",
    ),
    Case(
        "opt-risk",
        argv("calibrate", "bundle", "--data", "cal.npz", "--risk", "1.5"),
        2,
        "is not a probability",
    ),
    Case(
        "opt-confidence",
        argv("calibrate", "bundle", "--data", "cal.npz", "--risk", "0.1", "--confidence", "0"),
        2,
        "is not a probability",
    ),
    Case(
        "opt-risk-metric",
        argv("calibrate", "bundle", "--data", "cal.npz", "--risk", "0.1", "--risk-metric", "vibes"),
        2,
        "'vibes' is not one of",
    ),
    Case(
        "opt-no-budget",
        argv("calibrate", "bundle", "--data", "cal.npz"),
        2,
        "no budget given; expected one of --target-latency, --target-p95-latency,",
    ),
    Case(
        "opt-risk-and-latency",
        argv(
            "calibrate", "bundle", "--data", "cal.npz", "--risk", "0.1", "--target-latency", "1ms"
        ),
        2,
        "--risk (guarantee mode) cannot be combined",
    ),
    Case(
        "opt-bench-batch",
        argv("bench", "bundle", "--data", "cal.npz", "--batch", "0"),
        2,
        "'--batch'",
    ),
    Case(
        "opt-bench-rounds",
        argv("bench", "bundle", "--data", "cal.npz", "--rounds", "0"),
        2,
        "'--rounds'",
    ),
    Case(
        "opt-bench-batch-text",
        argv("bench", "bundle", "--data", "cal.npz", "--batch", "many"),
        2,
        "'--batch'",
    ),
    Case("opt-profile-repeats", argv("profile", "bundle", "--repeats", "0"), 2, "'--repeats'"),
    Case("opt-profile-warmup", argv("profile", "bundle", "--warmup", "-1"), 2, "'--warmup'"),
    Case("opt-profile-batch", argv("profile", "bundle", "-b", "0"), 2, "'--batch-size'"),
    Case(
        "opt-run-threads",
        argv("run", "bundle", "--input", "x.npy", "--threads", "-2"),
        2,
        "'--threads'",
    ),
    Case(
        "opt-run-warmup",
        argv("run", "bundle", "--input", "x.npy", "--warmup", "-1"),
        2,
        "'--warmup'",
    ),
    Case("opt-opset", argv("export", "model.pt", "-o", "out", "--opset", "3"), 2, "'--opset'"),
    Case(
        "opt-atol-zero",
        argv("export", "model.pt", "-o", "out", "--atol", "0"),
        2,
        "is not a positive number",
    ),
    Case(
        "opt-atol-inf",
        argv("export", "model.pt", "-o", "out", "--atol", "inf"),
        2,
        "is not a finite number",
    ),
    Case(
        "opt-quant-drop",
        argv("export", "model.pt", "-o", "out", "--max-quant-drop", "200"),
        2,
        "expected a fraction in [0, 1) such as 0.01, or points such as 1pp",
    ),
    Case(
        "opt-quant-drop-old-points",  # --max-quant-drop used to take points: 1 is refused
        argv("export", "model.pt", "-o", "out", "--max-quant-drop", "1"),
        2,
        "is not an accuracy drop",
    ),
    Case(
        "opt-input-shape",
        argv("export", "model.pt", "-o", "out", "--input-shape", "1xq"),
        2,
        "is malformed",
    ),
    Case(
        "opt-input-shape-zero",
        argv("export", "model.pt", "-o", "out", "--input-shape", "1x0x8"),
        2,
        "zero dim",
    ),
    Case(
        "opt-input-dtype",
        argv("export", "model.pt", "-o", "out", "--input-shape", "1x8x8:quux"),
        2,
        "unknown dtype",
    ),
    Case(
        "opt-patience",
        argv("export", "model.pt", "-o", "out", "-c", "patience", "--patience", "0"),
        2,
        "'--patience'",
    ),
    Case(
        "opt-target",
        argv("run", "bundle", "--input", "x.npy", "--target", "toaster"),
        2,
        "'toaster' is not a target",
    ),
    Case(
        "opt-target-bench",
        argv("bench", "bundle", "--data", "cal.npz", "-t", "pi9"),
        2,
        "'pi9' is not a target",
    ),
    Case("opt-demo-epochs", argv("demo", "--epochs", "0"), 2, "'--epochs'"),
    Case("opt-demo-model-alone", argv("demo", "--model", "model.pt"), 2, "--model needs --data"),
    Case("opt-demo-data-alone", argv("demo", "--data", "cal.npz"), 2, "go with --model"),
    Case(
        "opt-unknown",
        argv("run", "bundle", "--input", "x.npy", "--colour", "red"),
        2,
        "No such option",
    ),
    Case("opt-empty-out", argv("export", "model.pt", "-o", ""), 2, "an empty path"),
    # sizes a manifest declares: bounded before anything is allocated from them
    Case(
        "input-shape-huge",  # a numpy MemoryError at the probe batch, once
        on("run", edit(setitem(("inputs", 0, "shape"), ["batch", 10**5, 10**5, 10**5]))),
        1,
        "over 268,435,456 elements per sample",
    ),
    Case(
        "input-shape-huge-profile",
        on("profile", edit(setitem(("inputs", 0, "shape"), ["batch", 2**40, 1, 1]))),
        1,
        "over 268,435,456 elements per sample",
    ),
    Case(
        "input-shape-not-the-graphs",  # a probe batch of 2**28 floats, then an ORT error
        on("run", edit(setitem(("inputs", 0, "shape"), ["batch", 1, 2**14, 2**14]))),
        1,
        "has shape ['batch', 1, 16384, 16384], but segment_00.onnx takes ['batch', 1, 8, 8]",
    ),
    Case(
        "input-rank-huge",
        on("run", edit(setitem(("inputs", 0, "shape"), ["batch", *[1] * 40]))),
        1,
        "40 axes after 'batch'; expected at most 32",
    ),
    Case(
        "input-dim-float",
        on("run", edit(setitem(("inputs", 0, "shape"), ["batch", 1.0, 8, 8]))),
        1,
        "positive sizes",
    ),
    Case(
        "input-names-repeat",
        on(
            "run",
            edit(lambda d: d["inputs"].append(dict(d["inputs"][0]))),
        ),
        1,
        "repeat a name",
    ),
    Case(
        "output-shape-huge",
        on("run", edit(setitem(("output_shape",), ["batch", 2**62]))),
        1,
        "manifest output_shape is",
    ),
    Case(
        "max-exit-bool",  # was read as the user's --max-exit
        on("run", edit(setitem(("max_exit",), True))),
        1,
        "manifest max_exit is True; expected an exit index 0..2",
    ),
    Case(
        "max-exit-beyond",
        on("bench", edit(setitem(("max_exit",), 3))),
        1,
        "manifest max_exit is 3",
    ),
    Case(
        "criterion-list",  # an unhashable value: a TypeError once
        on("run", edit(setitem(("criterion",), ["confidence"]))),
        1,
        "manifest criterion is ['confidence']",
    ),
    Case(
        "external-data-int",
        on("run", edit(setitem(("segments", 1, "external_data"), 5))),
        1,
        "external_data must be a list",
    ),
    Case(
        "threshold-beyond-float",  # 400 digits: an OverflowError once
        on(
            "run", lambda w: put_manifest(w, json.dumps(manifest(w)).replace("0.9", "9" * 400, 1))
        ),  # fmt: skip
        1,
        "thresholds[0] is beyond any float",
    ),
    Case(
        "manifest-nested-deep",  # a RecursionError once
        on("run", lambda w: put_manifest(w, "[" * 100_000 + "]" * 100_000)),
        1,
        "nested too deeply",
    ),
    Case(
        "manifest-huge-string",
        on("run", edit(setitem(("format",), "x" * 1_000_000))),
        1,
        "format is 'xxxxxxxx",
    ),
    Case(
        "data-empty-npz",  # was "not a .npy or .npz file"
        argv("run", "bundle", "--input", "bad.npz", mutate=npz("bad.npz")),
        1,
        "holds no arrays; expected 'x' (or one array per model input) and optional 'y'",
    ),
    Case(
        "profile-batch-huge",  # beyond this machine: one line, not a MemoryError traceback
        argv("profile", "bundle", "--repeats", "1", "-b", str(10**12)),
        1,
        "not enough memory",
    ),
]


# -- every field of a classifier manifest, against what an attacker tries next -------------

HOSTILE = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -1,
    "fraction": 0.5,
    "huge-int": 10**30,
    "huge-float": 1e308,
    "empty-str": "",
    "long-str": "x" * 100_000,
    "empty-list": [],
    "empty-object": {},
    "nested": [[[[]]]],
    "object-list": [{"a": [1]}],
}
# Every field edgeexit/bundle.py reads from a classifier manifest (segment 1: a middle one,
# which may have a body and a prefix), with the hostile values that are fine there (an
# optional key may be null, a threshold any number): every other one must be refused.
MANIFEST_FIELDS: dict[tuple, tuple[str, ...]] = {
    ("format",): (),
    ("output",): (),
    ("inputs",): (),
    ("inputs", 0): (),
    ("inputs", 0, "name"): (),
    ("inputs", 0, "dtype"): (),
    ("inputs", 0, "shape"): (),
    ("segments",): (),
    ("segments", 1): (),
    ("segments", 1, "file"): (),
    ("segments", 1, "sha256"): (),
    ("segments", 1, "inputs"): (),
    ("segments", 0, "carry"): (),
    ("segments", 1, "logits"): (),
    ("segments", 1, "score"): (),
    ("segments", 1, "external_data"): ("empty-list",),
    ("segments", 1, "body"): ("null",),
    ("segments", 1, "plain"): ("null",),
    ("segments", 1, "prefix"): ("null",),
    ("segments", 2, "body"): ("null",),  # the last exit always runs its head
    ("segments", 0, "prefix"): ("null",),  # segment 0 takes the model inputs itself
    ("criterion",): (),
    ("criterion_params",): ("empty-object",),
    ("thresholds",): (),
    ("thresholds", 1): ("null", "zero", "negative", "fraction", "huge-int", "huge-float"),
    ("max_exit",): ("null", "zero"),
    ("num_classes",): ("null",),
    ("tokens",): ("null",),
    ("output_shape",): ("null",),
}


def manifest_fuzz() -> list[Case]:
    """Each field set to each hostile value it may not hold, run through `run`: one line
    that names the manifest."""
    return [
        Case(
            f"fuzz-{'.'.join(map(str, path))}={name}",
            on("run", edit(setitem(path, value))),
            1,
            "manifest",
        )  # fmt: skip
        for path, fine in MANIFEST_FIELDS.items()
        for name, value in HOSTILE.items()
        if name not in fine
    ]


CASES += manifest_fuzz()


def test_the_manifest_fuzz_covers_every_field_the_reader_checks(pristine):
    from edgeexit.bundle import ExternalFile, GraphFile, read_manifest

    m = read_manifest(pristine / "bundle")
    g = GraphFile("g.onnx", "0" * 64, (ExternalFile("w.bin", "0" * 64),))
    middle = replace(m.segments[1], external_data=g.external_data, body=g, plain=g, prefix=g)
    doc = replace(m, segments=(m.segments[0], middle, m.segments[2]), output="tensor").to_json()
    fuzzed = {path[-1] for path in MANIFEST_FIELDS}
    informative = {"precision"}  # kept untouched, read by nothing that decides
    assert set(doc) - informative <= fuzzed
    assert set(doc["segments"][1]) <= fuzzed
    assert {"max_exit", "num_classes", "tokens", "output_shape"} <= fuzzed  # read back too


def test_there_are_enough_cases():
    assert len(CASES) >= 120
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_and_changes_nothing(case, world):
    args = case.setup(world)
    before = snapshot(world)
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == case.code, (result.exit_code, result.stderr, result.stdout)
    assert len(errors) == 1, result.stderr
    assert case.message in errors[0], errors[0]
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(world) == before  # byte-identical, same modes, nothing added or removed
    assert not (world / "PWNED").exists()  # no model file got to run code
