"""`edgeexit demo --generate`: a byte-level decoder that can exit, end to end, no download.

Trains a small Llama-style decoder with exits after layers 2, 4 and 8 on the Python
standard library's own source (LayerSkip-style early-exit loss with self-distillation, 900
steps; about 5.5 minutes on 2 cores under bfloat16 autocast where oneDNN computes it, ~8.5
in float32; cached under the user's cache folder), exports it as a decoder bundle, calibrates
how it generates on this machine, and decodes held-out code prompts in the three modes.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from edgeexit import files
from edgeexit.examples.text import EOS, VOCAB, stdlib_corpus
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

CONFIG = DecoderConfig(vocab_size=VOCAB, dim=192, heads=6, layers=8, hidden=512,
                       exit_after=(2, 4, 8), max_positions=512, eos_token_id=EOS)  # fmt: skip
TRAIN_BYTES = 4 << 20  # the corpus trained on; prompts come from the source after it
STEPS = 900
EXIT_SCALE = 1.5  # early exits weigh more: the first drafts for self-speculative decoding
DISTILL = 1.0  # and learn the last exit's predictions: agreeing is what gets a draft accepted
PROMPT_BYTES = 32
Progress = Callable[[str, int, int], None]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "edgeexit"


def demo_decoder(steps: int = STEPS, *, progress: Progress | None = None) -> MultiExitDecoder:
    """The demo's trained decoder: from the cache when this Python trained it before."""
    tell = progress or (lambda stage, done, total: None)
    bf16 = bf16_is_fast()
    key = hashlib.sha256(
        repr(
            (
                asdict(CONFIG),
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
    model = MultiExitDecoder(CONFIG)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    corpus = stdlib_corpus(TRAIN_BYTES)
    train_decoder(model, corpus, steps=steps, exit_scale=EXIT_SCALE, distill=DISTILL, bf16=bf16,
                  on_step=lambda s, _: tell("training", s, steps))  # fmt: skip
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

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "calibration": self.calibration.to_json(),
                "modes": self.rows, "sample": self.sample}  # fmt: skip

    def __rich__(self) -> Table:
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
             f"{self.sample['full']!r}", f"bundle: {self.out_dir / 'bundle'}"]
        )  # fmt: skip
        return table


def run_generation_demo(
    out_dir: Path, *, steps: int = STEPS, max_new_tokens: int = 48, progress: Progress | None = None
) -> GenerationDemo:
    tell = progress or (lambda stage, done, total: None)
    files.check_output(out_dir, "demo")
    model = demo_decoder(steps, progress=tell)
    prompts = held_out_prompts()
    calibration_prompts, test_prompts = prompts[:32], prompts[32:]
    with files.atomic_dir(out_dir, "demo") as tmp:
        (tmp / files.DEMO_MARKER).write_text("written by edgeexit demo --generate\n")
        tell("exporting", 0, 1)
        export_decoder(model, tmp / "bundle", tokenizer=text.BYTES)
        report = calibrate_generation(
            tmp / "bundle", calibration_prompts, held_out=test_prompts,
            max_new_tokens=max_new_tokens, threads=1, progress=tell,
        )  # fmt: skip
        rows, sample = _compare(Generator(tmp / "bundle", threads=1), test_prompts, max_new_tokens)
    return GenerationDemo(out_dir, report, rows, sample)


def _compare(generator: Generator, prompts, new: int):
    """Every mode on every prompt, alternating modes prompt by prompt."""
    modes = ("full", "self-speculative", "early-exit")
    runs: dict[str, list] = {m: [] for m in modes}
    for r in range(2):
        for p, prompt in enumerate(prompts):
            for mode in round_order(modes, p + r):
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
