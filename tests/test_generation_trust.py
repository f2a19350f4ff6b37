"""A decoder bundle against a careless user and an attacker: its manifest, its graphs, the
prompts and options handed to `generate` and `calibrate-generation`, and `inspect`.

Every bad input ends with one ``error:`` line naming the problem, exit code 1 (2 for a
malformed option), no traceback, the interpreter alive (the cases that once wrote past the
caches run in a subprocess, so that a crash fails the case instead of the test run), and
every file as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from edgeexit.cli import app  # noqa: E402
from edgeexit.errors import InputError  # noqa: E402
from edgeexit.export.decoder_export import export_decoder  # noqa: E402
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder  # noqa: E402
from edgeexit.generation import Generator, SpeculativeOptions  # noqa: E402

ROOT = Path(__file__).parents[1]
CONFIG = DecoderConfig(dim=16, heads=2, layers=3, hidden=32, exit_after=(1, 2, 3),
                       max_positions=24, vocab_size=257, eos_token_id=None)  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    torch.manual_seed(0)
    model = MultiExitDecoder(CONFIG).eval()
    bundle = tmp_path_factory.mktemp("decoder") / "bundle"
    export_decoder(model, bundle, tokenizer="bytes")
    return bundle


@pytest.fixture
def bundle(pristine, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def edit(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def isolated(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The command in its own interpreter: a crash is a return code, not a dead test run.
    Arguments may be bytes (an argv that is not UTF-8)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [
        sys.executable,
        "-m",
        "edgeexit",
        *(a if isinstance(a, bytes) else str(a) for a in args),
    ]
    return subprocess.run(argv, capture_output=True, env=env, timeout=120, input=stdin)


def one_error(result, code: int, message: str) -> str:
    """The one ``error:`` line of a CLI result (CliRunner's or a subprocess's)."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    rc = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert rc == code and len(errors) == 1, (rc, stderr)
    assert message in errors[0], errors[0]
    return errors[0]


# -- what once wrote past the caches ---------------------------------------------------------


def test_a_fractional_draft_length_in_the_manifest_is_refused_not_run(bundle):
    spec = {"k": 1, "gamma": 2.5, "draft_stop": 0.0}
    edit(bundle, lambda d: d.update(generation={"self_speculative": spec}))
    before = snapshot(bundle)
    done = isolated("generate", bundle, "--prompt", "abc", "-n", 20, "--mode", "self-speculative")
    one_error(done, 1, "gamma")
    assert "2.5" in done.stderr.decode()
    assert snapshot(bundle) == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gamma=2.5), "`gamma` is 2.5; expected a positive integer"),
        (dict(gamma=0), "`gamma` is 0"),
        (dict(gamma=True), "`gamma` is True"),
        (dict(gamma="4"), "`gamma` is '4'"),
        (dict(k=1.0), "`k` is 1.0"),
        (dict(k=-1), "`k` is -1"),
        (dict(k=False), "`k` is False"),
        (dict(draft_stop=math.nan), "`draft_stop` is nan"),
        (dict(draft_stop=math.inf), "`draft_stop` is inf"),
        (dict(draft_stop="0.3"), "`draft_stop` is '0.3'"),
        (dict(draft_stop=None), "`draft_stop` is None"),
    ],
)
def test_speculative_options_check_their_fields(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        SpeculativeOptions(**kwargs)


def test_good_speculative_options_still_build():
    assert SpeculativeOptions(2, 8, 0.3) == SpeculativeOptions(k=2, gamma=8, draft_stop=0.3)
    assert SpeculativeOptions(draft_stop=1).draft_stop == 1  # above every confidence: no drafts


# -- thresholds: never is inf or null, -inf and NaN mean nothing ----------------------------


@pytest.fixture(scope="module")
def generator(pristine):
    return Generator(pristine, threads=1)


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ((-math.inf, 0.5), "threshold 0 is -inf"),
        ((0.5, math.nan), "threshold 1 is nan"),
        ((0.5, True), "threshold 1 is True"),
        ((0.5, "0.5"), "threshold 1 is '0.5'"),
        ("0.5,0.5", "thresholds are str"),
        ((0.5,), "got 1 thresholds; expected 2"),
    ],
)
def test_early_exit_thresholds_that_mean_nothing_are_refused(generator, thresholds, message):
    with pytest.raises(InputError, match=message) as err:
        generator.generate([1, 2], max_new_tokens=4, mode="early-exit", thresholds=thresholds)
    assert "\n" not in str(err.value)


def test_never_is_inf_or_none_and_leaves_every_token_at_the_last_exit(generator):
    full = generator.generate([1, 2], max_new_tokens=6).tokens
    for never in ((math.inf, math.inf), (None, None), (np.float32(np.inf), None)):
        out = generator.generate([1, 2], max_new_tokens=6, mode="early-exit", thresholds=never)
        assert out.tokens == full and set(out.exits) == {2}
    always = generator.generate([1, 2], max_new_tokens=6, mode="early-exit",
                                thresholds=(0.0, np.float32(0.0)))  # fmt: skip
    assert set(always.exits[1:]) == {0}  # the first token is the prefill's: the last exit


def test_the_thresholds_option_refuses_minus_inf_and_takes_never(pristine):
    base = ("generate", pristine, "--prompt", "ab", "-n", 4, "--mode", "early-exit")
    one_error(cli(*base, "--thresholds", "-inf,0.5"), 2, "holds NaN or -inf")
    one_error(cli(*base, "--thresholds", "0.5,nan"), 2, "holds NaN or -inf")
    never = cli(*base, "--thresholds", "never,inf", "--json")
    assert never.exit_code == 0, never.output
    assert set(json.loads(never.stdout)["exits"]) == {2}


def test_min_agreement_out_of_range_is_a_usage_error(pristine, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["ab", "cd"]))
    for value in ("0", "1.5", "-0.1", "nan"):
        result = cli("calibrate-generation", pristine, "--prompts", prompts,
                     "--min-agreement", value, "--dry-run")  # fmt: skip
        one_error(result, 2, "--min-agreement")


# -- every bind checks its rows against its array -------------------------------------------

CACHE_PROBE = """
import sys
import numpy as np
from edgeexit.errors import InputError
from edgeexit.generation import Generator

gen = Generator(sys.argv[1], threads=1)
segment, cap, dim = gen.segments[1], gen.manifest.max_positions, gen.manifest.dim


def segment_at(length, rows):
    segment.length = length
    segment.run(np.zeros((rows, dim), np.float32))


calls = {
    "past the end": lambda: segment_at(cap - 1, 3),
    "a negative length": lambda: segment_at(-2, 1),
    "too many rows": lambda: segment_at(0, cap + 1),
    "the head, too many rows": lambda: gen.head.run(np.zeros((cap + 1, dim), np.float32)),
    "the head, too wide": lambda: gen.head.run(np.zeros((2, dim + 1), np.float32)),
}
for what, call in calls.items():
    try:
        call()
        print(what, "ran")
    except InputError as err:
        print(what, "refused:", err)
"""


def python(code: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def test_cache_writes_past_their_end_raise_instead(pristine):
    done = python(CACHE_PROBE, pristine)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 5, done.stdout + done.stderr
    assert all(" refused: " in line for line in lines), lines
    assert "3 new positions after 23 do not fit the caches' 24 positions" in lines[0]
