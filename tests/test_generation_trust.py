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
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.hang import HANG_S

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from edgeexit.cli import app  # noqa: E402
from edgeexit.errors import InputError  # noqa: E402
from edgeexit.export.decoder_export import export_decoder  # noqa: E402
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder  # noqa: E402
from edgeexit.generation import Generator, SpeculativeOptions  # noqa: E402

ROOT = Path(__file__).parents[1]
MEMORY_CAP = 8 << 30  # address space of a command run in a subprocess
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


def isolated(*args) -> subprocess.CompletedProcess:
    """The command in its own interpreter, its memory capped: a crash is a return code and
    a runaway allocation a MemoryError there, not a dead test run or a starved machine."""
    argv = [sys.executable, "-m", "edgeexit", *map(str, args)]
    return subprocess.run(argv, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=HANG_S, preexec_fn=_cap_memory)  # fmt: skip


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


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
        (np.array([0.5, -np.inf]), "threshold 1 is -inf"),
        (np.array([True, False]), "threshold 0 is True"),
    ],
)
def test_early_exit_thresholds_that_mean_nothing_are_refused(generator, thresholds, message):
    with pytest.raises(InputError, match=message) as err:
        generator.generate([1, 2], max_new_tokens=4, mode="early-exit", thresholds=thresholds)
    assert "\n" not in str(err.value)


def test_never_is_inf_or_none_and_leaves_every_token_at_the_last_exit(generator):
    full = generator.generate([1, 2], max_new_tokens=6).tokens
    nevers = ((math.inf, math.inf), (None, None), (np.float32(np.inf), None), np.full(2, np.inf))
    for never in nevers:
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
    return subprocess.run(argv, capture_output=True, text=True, timeout=HANG_S, env=env,
                          preexec_fn=_cap_memory)  # fmt: skip


def test_cache_writes_past_their_end_raise_instead(pristine):
    done = python(CACHE_PROBE, pristine)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 5, done.stdout + done.stderr
    assert all(" refused: " in line for line in lines), lines
    assert "3 new positions after 23 do not fit the caches' 24 positions" in lines[0]


# -- the manifest, field by field -----------------------------------------------------------


def setter(*path, value):
    """A change that sets ``doc[path...] = value`` (creating objects on the way)."""

    def change(doc):
        for key in path[:-1]:
            doc = doc.setdefault(key, {})
        doc[path[-1]] = value

    return change


def speculative(**fields):
    return setter("generation", "self_speculative", value={"k": 1, "gamma": 4,
                                                          "draft_stop": 0.0, **fields})  # fmt: skip


def dropped(key):
    return lambda doc: doc.pop(key)


SIZE_CASES = [
    (f"{size}={value!r}", setter(size, value=value), f"{size} is {value!r}")
    for size in ("vocab_size", "dim", "heads", "head_dim", "max_positions")
    for value in (0, -1, True, 1.5, "16", None, 2**63, 10**30)
]
# (id, change, what the error line must say); every one exits 1
MANIFEST_CASES = [
    *SIZE_CASES,
    ("no max_positions", dropped("max_positions"), "has no 'max_positions'"),
    ("dim != heads x head_dim", setter("head_dim", value=4), "heads x head_dim is 2 x 4"),
    ("graph wider than manifest", lambda d: d.update(dim=32, head_dim=16),
     "past_key_0 has 8 at axis 3"),
    ("more heads than graph", lambda d: d.update(heads=4, head_dim=4), "has 2 at axis 2"),
    ("kv_heads not a divisor", setter("kv_heads", value=3), "kv_heads is 3; expected a divisor "
     "of heads (2)"),
    ("kv_heads 0", setter("kv_heads", value=0), "kv_heads is 0"),
    ("kv_heads bool", setter("kv_heads", value=True), "kv_heads is True"),
    ("kv_heads float", setter("kv_heads", value=2.0), "kv_heads is 2.0"),
    ("kv_heads not the graph's", setter("kv_heads", value=1), "past_key_0 has 2 at axis 2"),
    ("vocab not the head's", setter("vocab_size", value=200), "head.onnx logits has 257"),
    ("layers not the graph's", lambda d: (d["segments"][0].update(layers=2), d.pop("exit_after")),
     "segment_00.onnx has no input 'past_key_1'"),
    ("caches past memory", setter("max_positions", value=2**24), "for its caches and buffers"),
    ("logits past memory", lambda d: d.update(vocab_size=2**24, max_positions=2**24),
     "for its caches and buffers"),
    ("eos -1", setter("eos_token_id", value=-1), "eos_token_id is -1"),
    ("eos = vocab", setter("eos_token_id", value=257), "eos_token_id is 257"),
    ("eos bool", setter("eos_token_id", value=True), "eos_token_id is True"),
    ("eos str", setter("eos_token_id", value="1"), "eos_token_id is '1'"),
    ("eos float", setter("eos_token_id", value=1.0), "eos_token_id is 1.0"),
    ("eos empty list", setter("eos_token_id", value=[]), "eos_token_id is []"),
    ("eos list with bad id", setter("eos_token_id", value=[1, 999]), "eos_token_id is [1, 999]"),
    ("no segments", setter("segments", value=[]), "segments must be a non-empty list"),
    ("segments object", setter("segments", value={}), "segments must be a non-empty list"),
    ("segment string", setter("segments", value=["segment_00.onnx"]), "segments[0] must be"),
    ("segment layers 0", lambda d: d["segments"][0].update(layers=0), "segments[0].layers"),
    ("segment layers bool", lambda d: d["segments"][0].update(layers=True), "segments[0].layers"),
    ("segment layers huge", lambda d: d["segments"][0].update(layers=2**40), "segments[0].layers"),
    ("segment outside", lambda d: d["segments"][0].update(file="../x.onnx"), "plain file name"),
    ("segment absolute", lambda d: d["segments"][0].update(file="/etc/passwd"), "plain file name"),
    ("segment sha short", lambda d: d["segments"][0].update(sha256="ab"), "64 lowercase hex"),
    ("external data int", lambda d: d["segments"][0].update(external_data=5),
     "external_data must be a list"),
    ("head is a segment", lambda d: d.update(head={**d["segments"][0], "layers": 0}),
     "head is 'segment_00.onnx', as segments[0] is"),
    ("one file many times", lambda d: d.update(segments=[d["segments"][0]] * 10**4),
     "segments[1] is 'segment_00.onnx', as segments[0] is"),
    ("head of another file", lambda d: d["head"].update(file="segment_01.onnx"),
     "as segments[1] is"),
    ("head tampered", lambda d: d["head"].update(sha256="0" * 64), "head.onnx does not match"),
    ("head layers", lambda d: d["head"].update(layers=1), "head.layers is 1"),
    ("no head", dropped("head"), "has no 'head'"),
    ("format", setter("format", value="edgeexit.bundle/decoder-9"), "format is"),
    ("tokenizer int", setter("tokenizer", value=5), "tokenizer is 5"),
    ("exit_after wrong", setter("exit_after", value=[1, 2, 4]), "exit_after is [1, 2, 4]"),
    ("exit_after str", setter("exit_after", value="123"), "exit_after is '123'"),
    ("opset negative", setter("opset", value=-1), "opset is -1"),
    ("generation list", setter("generation", value=[]), "generation is list"),
    ("generation unknown key", setter("generation", "mode", value="full"), "generation has 'mode'"),
    ("gamma 2.5", speculative(gamma=2.5), "gamma is 2.5"),
    ("gamma 0", speculative(gamma=0), "gamma is 0"),
    ("gamma true", speculative(gamma=True), "gamma is True"),
    ("gamma str", speculative(gamma="4"), "gamma is '4'"),
    ("gamma null", speculative(gamma=None), "gamma is None"),
    ("k 0", speculative(k=0), "k is 0"),
    ("k = exits", speculative(k=3), "k is 3; expected 1..2"),
    ("k float", speculative(k=1.0), "k is 1.0"),
    ("k huge", speculative(k=2**70), "k is"),
    ("draft_stop str", speculative(draft_stop="0.3"), "draft_stop is '0.3'"),
    ("speculative unknown key", speculative(delta=1), "has 'delta'"),
    ("speculative list", setter("generation", "self_speculative", value=[1, 4]), "is list"),
    ("thresholds too few", setter("generation", "early_exit", value=[0.5]), "got 1 thresholds"),
    ("thresholds str", setter("generation", "early_exit", value="0.5,0.5"), "thresholds are str"),
    ("threshold str", setter("generation", "early_exit", value=["a", 0.5]), "threshold 0 is 'a'"),
    ("threshold bool", setter("generation", "early_exit", value=[0.5, True]), "threshold 1 is"),
    ("report str", setter("generation", "report", value="fine"), "generation.report is str"),
    ("report agreement 0", setter("generation", "report", value={"min_agreement": 0}),
     "report.min_agreement is 0"),
    ("report agreement 1.5", setter("generation", "report", value={"calibration_agreement": 1.5}),
     "report.calibration_agreement is 1.5"),
    ("report held str", setter("generation", "report", value={"held": "y"}), "report.held is 'y'"),
    ("report speedup negative", setter("generation", "report", value={"speculative_speedup": -1}),
     "report.speculative_speedup is -1"),
    ("report depth str", setter("generation", "report", value={"mean_exit_depth": "50%"}),
     "report.mean_exit_depth is '50%'"),
    ("report thresholds", setter("generation", "report", value={"early_exit": [0.5]}),
     "report.early_exit: got 1 thresholds"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", [c[1:] for c in MANIFEST_CASES],
                         ids=[c[0] for c in MANIFEST_CASES])  # fmt: skip
def test_every_manifest_field_is_checked_at_load(bundle, change, message):
    """In a subprocess: before these checks, some cases wrote past the caches (a crash)
    or allocated without end (2^40 layers)."""
    edit(bundle, change)
    before = snapshot(bundle)
    args = ("generate", bundle, "--prompt", "abc", "-n", 8, "--mode", "self-speculative")
    one_error(isolated(*args), 1, message)
    assert snapshot(bundle) == before


@pytest.mark.parametrize(
    "field, literal, message",
    [
        ("max_positions", "NaN", "NaN is not a JSON number"),
        ("max_positions", "1e400", "max_positions is inf"),
        ("draft_stop", "1e400", "draft_stop is inf"),
        ("early_exit", "[-1e400, 0.5]", "threshold 0 is -inf"),
    ],
)
def test_numbers_past_json_are_refused(bundle, field, literal, message):
    """Python's JSON reads 1e400 as inf: a number no check of 'is it a number' catches."""
    edit(bundle, speculative())
    edit(bundle, setter("generation", "early_exit", value=[0.5, 0.5]))
    path = bundle / "manifest.json"
    text = path.read_text()
    old = {"max_positions": '"max_positions": 24', "draft_stop": '"draft_stop": 0.0',
           "early_exit": '"early_exit": [0.5, 0.5]'}[field]  # fmt: skip
    path.write_text(text.replace(old, f'"{field}": {literal}'))
    one_error(
        isolated("generate", bundle, "--prompt", "abc", "--mode", "self-speculative"), 1, message
    )


def test_a_manifest_may_list_several_end_of_text_ids(bundle, generator):
    full = generator.generate([1, 2], max_new_tokens=12).tokens
    stop = [full[6], full[3]]  # two ids the model emits: the first met ends the text
    edit(bundle, setter("eos_token_id", value=stop))
    out = Generator(bundle, threads=1)
    for mode in ("full", "self-speculative", "early-exit"):
        got = out.generate([1, 2], max_new_tokens=12, mode=mode, thresholds=(None, None))
        end = min(full.index(t) for t in stop)
        assert got.tokens == full[: end + 1] and got.stopped == "eos", mode
    assert out.manifest.to_json()["eos_token_id"] == stop


# -- prompts and token ids ------------------------------------------------------------------


def test_a_prompt_that_is_not_utf8_is_one_line(pristine):
    # an argv byte that is not UTF-8 reaches Python as a lone surrogate
    done = isolated("generate", pristine, "--prompt", os.fsdecode(b"ab\xff"))
    one_error(done, 1, "the prompt is not UTF-8 text (character 2")


def test_a_prompts_file_with_a_lone_surrogate_is_one_line(pristine, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text('["fine", "bad \\udc80 one"]')  # valid JSON, no UTF-8 form
    result = cli("calibrate-generation", pristine, "--prompts", prompts, "--dry-run")
    one_error(result, 1, "prompt 1 in")


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([[1, 2], [1, 2**70]], "prompt 1 in"),
        ([[1, True]], "prompt 0 in"),
        ([[1, 2.0]], "prompt 0 in"),
    ],
)
def test_a_prompts_file_holds_token_ids_that_are_integers(pristine, tmp_path, prompts, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prompts))
    result = cli("calibrate-generation", pristine, "--prompts", path, "--dry-run")
    assert "neither text nor a list of token ids" in one_error(result, 1, message)


def test_token_ids_past_int64_are_one_line(pristine, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("1 99999999999999999999")
    one_error(cli("generate", pristine, "--prompt-ids", ids), 1, "a number past int64")


def test_a_uint64_id_is_named_as_written(pristine, tmp_path):
    np.save(tmp_path / "ids.npy", np.array([1, 2**64 - 1], dtype=np.uint64))
    result = cli("generate", pristine, "--prompt-ids", tmp_path / "ids.npy")
    one_error(result, 1, f"prompt id {2**64 - 1} at position 1 is outside the vocabulary")


def test_several_prompts_in_one_array_are_refused_not_joined(pristine, tmp_path):
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3], [4, 5, 6]]))
    result = cli("generate", pristine, "--prompt-ids", tmp_path / "ids.npy")
    one_error(result, 1, "an array of shape [2, 3]; expected one prompt")
    with pytest.raises(InputError, match=r"shape \[2, 3\]; expected one sequence"):
        Generator(pristine, threads=1).generate(np.array([[1, 2, 3], [4, 5, 6]]))


def test_broken_npy_files_are_one_line(pristine, tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "archive.npz", ids=np.arange(3))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    one_error(cli("generate", pristine, "--prompt-ids", tmp_path / "empty.npy"), 1, "empty.npy")
    one_error(cli("generate", pristine, "--prompt-ids", tmp_path / "archive.npy"), 1, "archive")


# -- inspect: did it arrive whole? ----------------------------------------------------------

# found when the graphs are opened (generate), not from the manifest alone (inspect)
AT_LOAD = ("graph wider than manifest", "more heads than graph", "vocab not the head's",
           "layers not the graph's", "caches past memory", "logits past memory",
           "kv_heads not the graph's")  # fmt: skip


@pytest.mark.parametrize("change, message", [c[1:] for c in MANIFEST_CASES if c[0] not in AT_LOAD],
                         ids=[c[0] for c in MANIFEST_CASES if c[0] not in AT_LOAD])  # fmt: skip
def test_inspect_refuses_every_bad_manifest_field(bundle, change, message):
    edit(bundle, change)
    before = snapshot(bundle)
    for args in ((), ("--json",)):
        one_error(cli("inspect", bundle, *args), 1, message)
    assert snapshot(bundle) == before


def test_inspect_describes_a_decoder_bundle(pristine):
    result = cli("inspect", pristine, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "decoder" and doc["integrity"] == "ok"
    assert [g["graph"] for g in doc["graphs"]] == ["segment 0", "segment 1", "segment 2", "head"]
    assert all(g["nodes"] > 0 and g["size_bytes"] > 0 for g in doc["graphs"])
    c = CONFIG
    caches = 2 * c.layers * c.max_positions * c.heads * c.head_dim * 4  # keys, values; float32
    assert doc["memory"]["cache_bytes"] == caches
    assert doc["memory"]["total_bytes"] == caches + doc["memory"]["buffer_bytes"]
    assert doc["memory"]["fits"] is True and doc["generation"] is None
    assert Generator(pristine).memory.total_bytes == doc["memory"]["total_bytes"]
    text = cli("inspect", pristine)
    assert text.exit_code == 0 and "every file matches its sha256" in text.stdout
    assert "generation: not calibrated" in text.stdout


def test_inspect_shows_the_generation_settings(bundle):
    choice = {"self_speculative": {"k": 2, "gamma": 6, "draft_stop": 0.3},
              "early_exit": [0.55, None],
              "report": {"calibration_agreement": 0.93, "held_out_agreement": 0.91,
                         "held": True}}  # fmt: skip
    edit(bundle, setter("generation", value=choice))
    text = " ".join(cli("inspect", bundle).stdout.split())  # rich wraps lines
    assert "self-speculative k=2, gamma=6, draft stop 0.3" in text
    assert "early-exit thresholds 0.55, never" in text
    assert "93.0% on calibration prompts, 91.0% held-out (met)" in text
    assert json.loads(cli("inspect", bundle, "--json").stdout)["generation"] == choice


def test_inspect_fails_a_decoder_bundle_that_did_not_arrive_whole(pristine, bundle):
    with open(bundle / "segment_01.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01")
    result = cli("inspect", bundle, "--json")
    assert "segment_01.onnx does not match its sha256" in one_error(result, 1, "integrity check")
    assert "segment_01.onnx" in json.loads(result.stdout)["integrity"]
    shutil.copy(pristine / "segment_01.onnx", bundle / "segment_01.onnx")
    (bundle / "head.onnx").unlink()
    one_error(cli("inspect", bundle), 1, "head.onnx is missing")


def test_inspect_says_when_the_caches_do_not_fit_this_machine(bundle, monkeypatch):
    import edgeexit.inspection

    monkeypatch.setattr(edgeexit.inspection, "available_mb", lambda: 0.01)  # 10 KiB free
    doc = json.loads(cli("inspect", bundle, "--json").stdout)
    assert doc["memory"]["fits"] is False
    assert "DOES NOT FIT" in " ".join(cli("inspect", bundle).stdout.split())


def test_inspect_measures_a_decoders_resident_memory(pristine):
    if not Path("/proc/self/status").exists():
        pytest.skip("resident memory is read from /proc")
    doc = json.loads(cli("inspect", pristine, "--json", "--memory").stdout)
    assert all(g["resident_mb"] is not None and g["resident_mb"] >= 0 for g in doc["graphs"])


@pytest.mark.parametrize("value", ["0.9", None, True, math.nan, 0, 1.5])
def test_calibrate_generation_checks_min_agreement_before_measuring(pristine, value):
    from edgeexit.errors import CalibrationError
    from edgeexit.generation.calibrate import calibrate_generation

    with pytest.raises(CalibrationError, match="`min_agreement` is"):
        calibrate_generation(pristine, [[1, 2]], min_agreement=value, write=False)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(dim=32.0), "`dim` is 32.0"),
        (dict(heads=True), "`heads` is True"),
        (dict(max_positions=-3), "`max_positions` is -3"),
        (dict(eps=0), "`eps` is 0"),
        (dict(rope_theta=math.nan), "`rope_theta` is nan"),
        (dict(exit_after=(2.0, 6)), "exit_after (2.0, 6) must hold layer counts"),
        (dict(eos_token_id=[1, True]), "eos_token_id True is not a token id"),
        (dict(kv_heads=3), "`kv_heads` is 3; expected a divisor of heads (4)"),
        (dict(kv_heads=0), "`kv_heads` is 0"),
        (dict(qkv_bias=1), "`qkv_bias` is 1; expected true or false"),
        (dict(sliding_window=0), "`sliding_window` is 0"),
        (dict(sliding_window=2.5), "`sliding_window` is 2.5"),
        (
            dict(sliding_window=4, sliding_layers=(6,)),
            "`sliding_layers` is (6,); expected increasing layer indices in 0..5",
        ),
        (dict(sliding_window=4, sliding_layers=(2, 1)), "`sliding_layers` is (2, 1)"),
    ],
)
def test_a_decoder_config_checks_its_fields(fields, message):
    from edgeexit.errors import ModelContractError

    with pytest.raises(ModelContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DecoderConfig(**fields)
