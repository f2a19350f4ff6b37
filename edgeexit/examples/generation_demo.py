"""`edgeexit demo --generate`: a byte-level decoder that can exit, end to end, no download.

Trains a small Llama-style decoder with exits after layers 2, 4 and 8 on the Python
standard library's own source (LayerSkip-style early-exit loss with self-distillation, 900
steps, on one torch thread; cached under the user's cache folder), exports it as a decoder
bundle, calibrates how it generates on this machine, and decodes held-out code prompts in
the three modes. It leaves the prompts it calibrated and checked on as JSON files, for
``edgeexit calibrate-generation``. ``QUICK`` is a run of about a minute: fewer steps,
prompts and tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from edgeexit import files
from edgeexit.examples.text import EOS, VOCAB, stdlib_corpus
from edgeexit.examples.threads import one_torch_thread
from edgeexit.export.decoder_export import export_decoder
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder
from edgeexit.export.train import bf16_is_fast, train_decoder
from edgeexit.generation import Generator, text
from edgeexit.generation.calibrate import (
    GenerationReport,
    calibrate_generation,
    token_agreement,
    tokens_per_s,
)
from edgeexit.generation.text import decode
from edgeexit.measure.rounds import round_order
from edgeexit.progress import Progress, or_silent

CONFIG = DecoderConfig(vocab_size=VOCAB, dim=192, heads=6, layers=8, hidden=512,
                       exit_after=(2, 4, 8), max_positions=512, eos_token_id=EOS)  # fmt: skip
TRAIN_BYTES = 4 << 20  # the corpus trained on; prompts come from the source after it
STEPS = 900
EXIT_SCALE = 1.5  # early exits weigh more: the first drafts for self-speculative decoding
DISTILL = 1.0  # and learn the last exit's predictions: agreeing is what gets a draft accepted
PROMPT_BYTES = 32
PROMPTS = 48  # two thirds calibrate, one third is held out
# --quick: half the layers at two thirds the width train 3x faster a step, and in a minute
# reach a lower held-out loss than CONFIG does (2.1 nats a byte against 2.7, measured here)
QUICK_CONFIG = DecoderConfig(vocab_size=VOCAB, dim=128, heads=4, layers=4, hidden=344,
                             exit_after=(1, 2, 4), max_positions=512, eos_token_id=EOS)  # fmt: skip
QUICK = {"config": QUICK_CONFIG, "steps": 200, "prompts": 30, "max_new_tokens": 32}


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "edgeexit"


# Fields DecoderConfig gained after demo decoders were first cached: keyed only where they
# differ from their defaults, so that a decoder trained before them (16 minutes) is found.
_LATER_FIELDS = {"kv_heads": None, "qkv_bias": False, "sliding_window": None,
                 "sliding_layers": None}  # fmt: skip


def _key_fields(config: DecoderConfig) -> dict:
    fields, plain = asdict(config), asdict(replace(config, **_LATER_FIELDS))
    return {k: v for k, v in fields.items() if k not in _LATER_FIELDS or v != plain[k]}


def demo_decoder(
    steps: int = STEPS, *, config: DecoderConfig = CONFIG, progress: Progress | None = None
) -> MultiExitDecoder:
    """The demo's trained decoder: from the cache when this Python trained it before."""
    tell = or_silent(progress)
    bf16 = bf16_is_fast()
    key = hashlib.sha256(
        repr(
            (
                _key_fields(config),
                steps,
                EXIT_SCALE,
                DISTILL,
                TRAIN_BYTES,
                bf16,
                sys.version_info[:2],
                torch.__version__,
            )
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir() / f"decoder-{key}.pt"
    model = MultiExitDecoder(config)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    tell("reading the standard library's source", 0, 0)
    corpus = stdlib_corpus(TRAIN_BYTES)
    tell("training, step", 0, steps)
    with one_torch_thread():
        train_decoder(model, corpus, steps=steps, exit_scale=EXIT_SCALE, distill=DISTILL,
                      bf16=bf16, on_step=lambda s, _: tell("training, step", s, steps))  # fmt: skip
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_bytes_atomic(path, buffer.getvalue(), what="cached demo model")
    return model


def held_out_prompts(count: int = 48) -> list[np.ndarray]:
    """Code the model never trained on: line starts from the source after the corpus."""
    text = stdlib_corpus(TRAIN_BYTES + (1 << 20))[TRAIN_BYTES:]
    starts = np.flatnonzero(text[:-PROMPT_BYTES] == ord("\n")) + 1
    rng = np.random.default_rng(0)
    chosen = []
    for s in rng.permutation(starts):
        window = text[s : s + PROMPT_BYTES]
        if EOS not in window and window[0] != ord("\n") and window[0] != ord(" "):
            chosen.append(window)
        if len(chosen) == count:
            break
    return chosen


def held_out_cross_entropy(model: MultiExitDecoder, windows: int = 64) -> list[float]:
    """Each exit's next-byte cross-entropy (nats) on source the model never trained on
    (``windows`` x 128 bytes after the corpus): what a training setting costs in quality."""
    text = stdlib_corpus(TRAIN_BYTES + windows * 129)[TRAIN_BYTES:]
    tokens = torch.as_tensor(text[: windows * 129], dtype=torch.int64).view(windows, 129)
    with torch.no_grad():
        exits = model.eval()(tokens[:, :-1])
    targets = tokens[:, 1:].reshape(-1)
    return [
        float(torch.nn.functional.cross_entropy(e.reshape(-1, e.shape[-1]), targets)) for e in exits
    ]


@dataclass(frozen=True)
class GenerationDemo:
    out_dir: Path
    calibration: GenerationReport
    rows: list[dict[str, Any]]
    sample: dict[str, str]
    trained: str = ""  # what the model is: "8 layers of 192, 900 training steps"

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "trained": self.trained,
                "calibration": self.calibration.to_json(), "modes": self.rows,
                "sample": self.sample, "next": self.next_steps()}  # fmt: skip

    def next_steps(self) -> list[str]:
        """The commands to try next, on what the demo left."""
        out = self.out_dir
        return [
            f"edgeexit generate {out / 'bundle'} --prompt 'def main(' --mode self-speculative",
            f"edgeexit calibrate-generation {out / 'bundle'} --prompts {out / PROMPTS_FILE} "
            f"--held-out {out / HELD_OUT_FILE}",
        ]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = Table(title=f"generation on held-out prompts ({platform.machine()})")
        table.add_column("mode", justify="right", no_wrap=True)  # never "self-specula…"
        for col in ("tokens/s", "vs full", "= full", "acceptance", "exit depth"):
            table.add_column(col, justify="right")
        for r in self.rows:
            table.add_row(
                r["mode"], f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}x",
                f"{r['agreement']:.1%}",
                "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}",
                "-" if r["mean_exit_depth"] is None else f"{r['mean_exit_depth']:.0%}",
            )  # fmt: skip
        table.caption = "\n".join(
            [*self.calibration.lines(), f"prompt {self.sample['prompt']!r} -> "
             f"{self.sample['full']!r}",
             f"model: {self.trained}; bundle: {self.out_dir / 'bundle'}"]
        )  # fmt: skip
        yield table
        yield Text("\n".join(f"next: {line}" for line in self.next_steps()))


PROMPTS_FILE, HELD_OUT_FILE = "prompts.json", "held-out.json"


def run_generation_demo(
    out_dir: Path,
    *,
    steps: int = STEPS,
    config: DecoderConfig = CONFIG,
    prompts: int = PROMPTS,
    max_new_tokens: int = 48,
    progress: Progress | None = None,
) -> GenerationDemo:
    """Train ``steps`` (or take the model from the cache), export, calibrate on two thirds
    of ``prompts`` held-out prompts and compare the modes on the rest, ``max_new_tokens``
    each, in ``out_dir`` (new, empty, or a demo's), which also gets those prompts as
    ``calibrate-generation`` reads them."""
    tell = or_silent(progress)
    files.check_output(out_dir, "demo")
    model = demo_decoder(steps, config=config, progress=tell)
    trained = f"{config.layers} layers of {config.dim}, {steps} training steps"
    chosen = held_out_prompts(prompts)
    cut = 2 * len(chosen) // 3
    calibration_prompts, test_prompts = chosen[:cut], chosen[cut:]
    new = max_new_tokens
    with files.atomic_dir(out_dir, "demo") as tmp:
        (tmp / files.DEMO_MARKER).write_text("written by edgeexit demo --generate\n")
        tell("exporting", 0, 0)
        # an int4 draft: the fastest self-speculative decoding of the fp32 model here
        export_decoder(model, tmp / "bundle", tokenizer=text.BYTES, draft="int4")
        _write_prompts(tmp / PROMPTS_FILE, calibration_prompts)
        _write_prompts(tmp / HELD_OUT_FILE, test_prompts)
        report = calibrate_generation(
            tmp / "bundle", calibration_prompts, held_out=test_prompts,
            max_new_tokens=new, threads=1, progress=tell,
        )  # fmt: skip
        generator = Generator(tmp / "bundle", threads=1)
        rows, sample = _compare(generator, test_prompts, new, tell)
    return GenerationDemo(out_dir, report, rows, sample, trained)


def _write_prompts(path: Path, prompts) -> None:
    """Each prompt as text where its bytes are UTF-8 (read back the same), else its ids."""
    shown = []
    for ids in prompts:
        as_text = bytes(int(t) for t in ids).decode("utf-8", errors="replace")
        same = np.array_equal(text.encode(as_text), ids)
        shown.append(as_text if same else [int(t) for t in ids])
    path.write_text(json.dumps(shown, indent=1) + "\n")


def _compare(generator: Generator, prompts, new: int, tell: Progress):
    """Every mode on every prompt, alternating modes prompt by prompt."""
    modes = ("full", "self-speculative", "early-exit")
    runs: dict[str, list] = {m: [] for m in modes}
    calls = 2 * len(prompts) * len(modes)
    for r in range(2):
        for p, prompt in enumerate(prompts):
            for mode in round_order(modes, p + r):
                tell("comparing the modes", sum(map(len, runs.values())), calls)
                runs[mode].append(generator.generate(prompt, max_new_tokens=new, mode=mode))
    full_rate = tokens_per_s(runs["full"])
    rows = []
    for mode in modes:
        drafted = sum(o.drafted for o in runs[mode])
        depths = [o.mean_exit_depth(generator.num_exits) for o in runs[mode]]
        rate = tokens_per_s(runs[mode])
        same = token_agreement([f.tokens for f in runs["full"]], [o.tokens for o in runs[mode]])
        rows.append({
            "mode": mode, "tokens_per_s": rate, "speedup": rate / full_rate,
            "agreement": same,
            "acceptance_rate": sum(o.accepted for o in runs[mode]) / drafted if drafted else None,
            "mean_exit_depth": None if depths[0] is None else float(np.mean(depths)),
        })  # fmt: skip
    sample = {"prompt": decode(prompts[0]), "full": decode(runs["full"][0].tokens)}
    return rows, sample
