"""Every command the README and docs/*.md tell a reader to type runs as written.

The convention (docs/design.md, section 6): a fenced block of commands to type is ```sh (or
```bash) and holds no `[optional]` brackets; a synopsis with placeholders is ```text and is
not run. A line that needs what no test machine has (a Pi, the network, a quarter of an hour)
ends its comment with `needs: WHAT`: it is not run, and is reported as a skipped test with
that reason. Every other line of every sh block runs through bash, in order, in a folder per
page that holds what its prose assumes (WORLDS), with `edgeexit` and `python` meaning this
interpreter and this checkout, and must exit 0. Doc commands rotted while only the Python
blocks ran: flags that were renamed, files the prose never made, a step said to fail that
works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fixtures.hang import HANG_S

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BY_NAME = {p.name: p for p in PAGES}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUNNABLE = {"sh", "bash"}
NEEDS = re.compile(r"\s#\s(?:.*\s)?needs: (.+)$")  # the line's comment ends with it
COMMENT = re.compile(r"(^|\s)#.*$")
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# a line a reader would type: a block holding one says ```sh (run) or ```text (a synopsis),
# not nothing, nor ```shell or ```console, which would go unrun
COMMAND = re.compile(r"^\s*(\$ )?(edgeexit|python3?|pip|make|scp|ssh|scripts/\S+|[A-Z_]+=\S+)\s")


@dataclass(frozen=True)
class Command:
    page: str  # e.g. docs/calibrate.md
    line: int  # its first line in the page
    text: str  # as written, continuation lines included
    needs: str | None  # what the machine would need: not run here

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """Each fenced block: (its language, the page line of its first line, its lines)."""
    text = path.read_text()
    return [
        (m[1], text.count("\n", 0, m.start(2)) + 1, m[2].splitlines()) for m in FENCE.finditer(text)
    ]


def commands(path: Path) -> list[Command]:
    """The commands of the page's sh/bash blocks, in order; a line ending in a backslash
    goes on to the next, as in a shell."""
    found = []
    for language, first, lines in blocks(path):
        if language not in RUNNABLE:
            continue
        start, held = first, []
        for number, line in enumerate(lines, first):
            if not held and (not line.strip() or line.lstrip().startswith("#")):
                continue
            start = start if held else number
            held.append(line)
            if not line.endswith("\\"):
                needs = NEEDS.search(line)
                page = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
                found.append(Command(page, start, "\n".join(held), needs and needs[1].strip()))
                held = []
    return found


def to_run(path: Path) -> list[Command]:
    return [c for c in commands(path) if c.needs is None]


def placeholders(line: str) -> bool:
    """Brackets outside quotes and comments: `[--json]`, not `pip install '.[export]'`."""
    return bool(re.search(r"[\[\]]", QUOTED.sub("", COMMENT.sub("", line))))


def test_a_block_of_commands_says_sh_and_a_synopsis_says_text():
    wrong = []
    for path in PAGES:
        for language, first, lines in blocks(path):
            for number, line in enumerate(lines, first):
                where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                if language in RUNNABLE and placeholders(line):
                    wrong.append(f"{where}  (a synopsis: ```text, or a concrete command)")
                elif language not in {*RUNNABLE, "text", "python"} and COMMAND.match(line):
                    wrong.append(f"{where}  (commands: ```sh; a synopsis: ```text)")
    assert not wrong, "\n".join(wrong)


def test_a_page_reads_as_its_commands_in_order(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```text\nedgeexit run BUNDLE [--json]\n```\n\n```sh\n# a comment\n\n"
        "edgeexit inspect b   # arrived whole?\nedgeexit calibrate b --data c.npz \\\n"
        "    --risk 0.02\nscp -r b pi@raspberrypi.local:   # copies; needs: a Pi\n```\n"
    )
    assert commands(page) == [
        Command("page.md", 8, "edgeexit inspect b   # arrived whole?", None),
        Command("page.md", 9, "edgeexit calibrate b --data c.npz \\\n    --risk 0.02", None),
        Command("page.md", 11, "scp -r b pi@raspberrypi.local:   # copies; needs: a Pi", "a Pi"),
    ]


def test_the_docs_commands_and_their_markers_are_found():
    # the checks here must have something to check: the patterns still match the docs
    every = [c for path in PAGES for c in commands(path)]
    assert len([c for c in every if c.needs is None]) >= 30
    marked = {(c.page, COMMENT.sub("", c.text).strip(), c.needs) for c in every if c.needs}
    assert ("README.md", "make test", "the network") in marked
    assert ("docs/deploying-to-raspberry-pi.md", "ssh pi@raspberrypi.local", "a Pi") in marked
    assert placeholders("edgeexit bench b --data t.npz [--json]")
    assert not placeholders("pip install -e '.[export,plot]'  # the extras [export] and [plot]")
    assert COMMAND.match("edgeexit demo") and COMMAND.match("VENV=v scripts/test-arm.sh -x")
    assert not COMMAND.match("edgeexit/") and not COMMAND.match("model.pt ──export──▶ bundle/")


# ---------------------------------------------------------------------------------------
# Running them


def shims(folder: Path) -> Path:
    """`edgeexit` and `python` as a reader's PATH would have them: this interpreter, this
    checkout (the test environment need not have the console script installed)."""
    folder.mkdir(exist_ok=True)
    for name, argv in (("edgeexit", "-m edgeexit "), ("python", ""), ("python3", "")):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {argv}"$@"\n')
        shim.chmod(0o755)
    return folder


def run(command: Command, world: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PATH": path, "PYTHONPATH": pythonpath}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command.text], cwd=world,
                          env=env, capture_output=True, text=True, timeout=HANG_S)  # fmt: skip


def run_all(page: list[Command], world: Path, bin_dir: Path) -> None:
    """Each command in turn; the first that fails, fails the page, with what it printed."""
    for command in page:
        done = run(command, world, bin_dir)
        if done.returncode != 0:
            pytest.fail(f"{command}\nexited {done.returncode}:\n{done.stderr[-3000:]}\n"
                        f"{done.stdout[-2000:]}", pytrace=False)  # fmt: skip


def test_a_command_that_fails_fails_its_page(tmp_path):
    bin_dir = shims(tmp_path / "bin")
    fine = Command("docs/x.md", 3, "edgeexit --version | grep -q edgeexit", None)
    run_all([fine], tmp_path, bin_dir)
    stale = Command("docs/x.md", 4, "edgeexit calibrate bundle/ --no-such-flag", None)
    with pytest.raises(pytest.fail.Exception, match=r"docs/x.md:4: .*--no-such-flag\nexited 2"):
        run_all([fine, stale], tmp_path, bin_dir)
    missing = Command("docs/x.md", 5, "edgeexit inspect no-such-bundle", None)
    with pytest.raises(pytest.fail.Exception, match=r"docs/x.md:5: .*\nexited 1"):
        run_all([missing], tmp_path, bin_dir)


# ---------------------------------------------------------------------------------------
# The worlds: what each page's prose assumes is there before its first command. Made from
# the library once a module (Stock), copied per page: the commands write into them.


def make_digits(out: Path, stock: Stock) -> None:
    """The demo's three-exit CNN on noisy digits, trained as the demo trains it, at twice
    its width: the later segments carry the compute, so exits pay and a calibrated bundle
    passes `bench --check`, which fails a bundle surely slower than the full model. (At
    the demo's width, the int8 bundle the Pi guide makes was only 1.04x faster on an x86
    host, 1.57x at this one; a CNN of a few microseconds a segment is slower than its full
    model.) model.pt (edgeexit.save), its fp32 bundle, calibration data (539 images) and
    held-out data (three noisy copies of 360 others: the budgets the docs calibrate to are
    met on it by several samples, not by one), and 8 inputs as .npy."""
    import torch

    import edgeexit
    from edgeexit.examples import load_digits, train_multi_exit
    from edgeexit.examples.digits import add_noise, noisy_copies
    from edgeexit.examples.models import digits_three_exit
    from edgeexit.examples.threads import one_torch_thread

    clean = load_digits(seed=0, fractions=(0.5, 0.3))
    train = noisy_copies(clean.train, 2, seed=0)
    torch.manual_seed(0)
    model = digits_three_exit(width=128)
    with one_torch_thread():
        train_multi_exit(model, train.x, train.y, epochs=6, lr=3e-3, seed=0)
    example = torch.from_numpy(train.x[:4])
    edgeexit.save(model.eval(), out / "model.pt", example_inputs=example)
    edgeexit.export(model, example, out / "bundle")
    add_noise(clean.calibration, seed=100).save_npz(out / "cal.npz")
    test = noisy_copies(clean.test, 3, seed=200)
    test.save_npz(out / "test.npz")
    np.save(out / "x.npy", test.x[:8])


def make_digits_rpi5(out: Path, stock: Stock) -> None:
    """The digits bundle compiled for a Pi 5 (int8)."""
    from edgeexit.compile import compile_bundle

    compile_bundle(stock("digits/bundle"), out / "bundle", "rpi5", calib=stock("digits/cal.npz"))


def make_decoder(out: Path, stock: Stock) -> None:
    """A small byte-level decoder bundle with three exits, as the generation demo's
    (untrained: the commands' mechanics are what is checked), and prompts for it."""
    import json

    import torch

    from edgeexit.export.decoder_export import export_decoder
    from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder
    from edgeexit.generation import text

    torch.manual_seed(0)
    config = DecoderConfig(dim=32, heads=2, layers=3, hidden=64, exit_after=(1, 2, 3),
                           max_positions=128)  # fmt: skip
    export_decoder(MultiExitDecoder(config).eval(), out / "bundle", tokenizer=text.BYTES)
    lines = ["def main(", "import os\n", "class Node:", "for i in range(", "return self."]
    (out / "prompts.json").write_text(json.dumps(lines[:4]))
    (out / "held-out.json").write_text(json.dumps(lines[4:]))
    np.save(out / "ids.npy", text.encode("def main("))


def make_bert_folder(out: Path, stock: Stock) -> None:
    """What `save_pretrained` writes for a small BERT of 8 layers (random, no download), and
    token data with labels to train its exit heads on."""
    tf = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    small = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    config = tf.BertConfig(**small, num_hidden_layers=8, max_position_embeddings=16)
    tf.BertForSequenceClassification(config).save_pretrained(out / "my-bert")
    ids = np.random.default_rng(0).integers(1, 50, (32, 10))
    np.savez(out / "train.npz", input_ids=ids, attention_mask=np.ones_like(ids),
             y=(ids[:, 0] > 25).astype(np.int64))  # fmt: skip


def make_llama_folder(out: Path, stock: Stock) -> None:
    """What `save_pretrained` writes for a small Llama (random, no download) with grouped
    key/value heads of 16 (fused attention takes them), its vocabulary the bytes' (the
    worlds' ids.npy is text's bytes)."""
    tf = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=64,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256)  # fmt: skip
    tf.LlamaForCausalLM(config).save_pretrained(out / "my-llama")


def make_hf_example(out: Path, stock: Stock) -> None:
    """docs/export.md's Hugging Face example, run as a reader runs it: bert-bundle/, cal.npz."""
    pytest.importorskip("transformers")
    example = ROOT / "docs" / "examples" / "hugging_face.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(example)], cwd=out, env=env, capture_output=True,
                          text=True, timeout=HANG_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


MAKERS = {"digits": make_digits, "digits-rpi5": make_digits_rpi5, "decoder": make_decoder,
          "bert": make_bert_folder, "hf-example": make_hf_example,
          "llama": make_llama_folder}  # fmt: skip


@dataclass(frozen=True)
class Stock:
    """What the worlds copy from, each kind (a MAKERS key) made when first asked for."""

    root: Path

    def __call__(self, source: str) -> Path:
        """``kind/name``: that file or folder of the kind."""
        kind, _, name = source.partition("/")
        folder = self.root / kind
        if not folder.is_dir():
            making = self.root / f"{kind}.partial"  # a kind that failed halfway is made anew
            shutil.rmtree(making, ignore_errors=True)
            making.mkdir()
            MAKERS[kind](making, self)
            making.rename(folder)
        return folder / name


DIGITS = {"model.pt": "digits/model.pt", "bundle": "digits/bundle"}
WORLDS: dict[str, dict[str, str]] = {  # page -> {path in its world: what it is a copy of}
    "bundle-format.md": {},  # `edgeexit demo` writes demo-out/ itself
    "calibrate.md": {"bundle": "digits/bundle", "cal.npz": "digits/cal.npz",
                     "test.npz": "digits/test.npz"},
    "deploying-to-raspberry-pi.md": {**DIGITS, "calib.npz": "digits/cal.npz",
                                     "test.npz": "digits/test.npz", "x.npy": "digits/x.npy",
                                     # what the Pi has once the copies (not run) are done
                                     "lm": "decoder/bundle",
                                     "prompts.json": "decoder/prompts.json"},
    "export.md": {"model.pt": "digits/model.pt", "bert-bundle": "hf-example/bert-bundle",
                  "cal.npz": "hf-example/cal.npz", "my-bert": "bert/my-bert",
                  "train.npz": "bert/train.npz", "my-llama": "llama/my-llama"},
    "generation.md": {"bundle": "decoder/bundle", "ids.npy": "decoder/ids.npy",
                      "prompts.json": "decoder/prompts.json", "my-llama": "llama/my-llama",
                      # what `edgeexit demo --generate` (not run: its training) leaves
                      "demo-generate/bundle": "decoder/bundle",
                      "demo-generate/prompts.json": "decoder/prompts.json",
                      "demo-generate/held-out.json": "decoder/held-out.json"},
    "runtime.md": {"bundle": "digits/bundle", "digits.npz": "digits/test.npz"},
    "serving.md": {"bundle": "digits/bundle", "cal.npz": "digits/cal.npz",
                   "test.npz": "digits/test.npz"},
    "targets.md": {**DIGITS, "calib.npz": "digits/cal.npz", "bundle-rpi5": "digits-rpi5/bundle"},
}  # fmt: skip


def build_world(page: str, world: Path, stock: Stock) -> Path:
    """The page's world, in a clone's root as the docs assume (docs/examples/ is there)."""
    world.mkdir()
    (world / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
    for name, source in WORLDS[page].items():
        made, to = stock(source), world / name
        to.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if made.is_dir() else shutil.copy)(made, to)
    return world


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> Stock:
    return Stock(tmp_path_factory.mktemp("docs-stock"))


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory) -> Path:
    return shims(tmp_path_factory.mktemp("docs-bin"))


def test_every_page_with_commands_to_run_has_a_world():
    assert {p.name for p in PAGES if to_run(p)} == set(WORLDS)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(WORLDS))
def test_the_commands_of_a_page_run_as_written(page, tmp_path, stock, bin_dir):
    pytest.importorskip("torch")
    world = build_world(page, tmp_path / "world", stock)
    run_all(to_run(BY_NAME[page]), world, bin_dir)


NOT_RUN = [c for p in PAGES for c in commands(p) if c.needs]


@pytest.mark.parametrize("command", NOT_RUN, ids=lambda c: f"{c.page}:{c.line}")
def test_a_command_that_needs_what_this_machine_lacks_is_not_run(command):
    typed = COMMENT.sub("", command.text.splitlines()[0]).strip()
    pytest.skip(f"{command.page}:{command.line}: `{typed}` needs {command.needs}")
