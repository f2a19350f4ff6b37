"""An RBQE-like denoiser on the bundled digits: every exit gives an enhanced image, and a
gate per exit assesses its quality (a predicted PSNR), so that each image stops at the
first exit whose output is judged good enough.

Data: clean digits in [0, 1] with Gaussian noise of a per-image strength (lightly noised
images are easy, heavily noised ones need the deeper exits). Each segment is a 3x3
convolution block; it carries its features and the noisy image on, and each exit predicts
the noise (residual learning: output = noisy - predicted noise) plus its gate, trained to
regress that exit's own PSNR against the clean image. ``QUICK`` settings train and
measure less, for a run of well under a minute.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text
from torch import nn

from edgeexit import files
from edgeexit.budget import Budget
from edgeexit.calibrate.quality import QualityReport
from edgeexit.examples.digits import load_digits
from edgeexit.examples.threads import one_torch_thread
from edgeexit.export.model import MultiExit
from edgeexit.measure.quality import MAX_PSNR_DB, PEAK, per_sample_quality
from edgeexit.measure.rounds import alternating_calls
from edgeexit.progress import Progress, or_silent

PSNR_SCALE = 10.0  # the gate predicts PSNR / 10 (dB): a score of 2.5 means 25 dB
EPOCHS = 6
QUICK = {"epochs": 4, "rounds": 1}  # run_denoise_demo's, for --quick


def noisy_clean(
    clean: np.ndarray, *, copies: int = 1, max_noise_std: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` noisy versions of the clean images [N, 1, 8, 8], each with Gaussian
    noise of its own strength (uniform in [0.02, max_noise_std]): (noisy, clean)."""
    rng = np.random.default_rng(seed)
    noisy, target = [], []
    for _ in range(copies):
        std = rng.uniform(0.02, max_noise_std, size=len(clean)).astype(np.float32)
        noise = rng.standard_normal(clean.shape).astype(np.float32) * std[:, None, None, None]
        noisy.append(clean + noise)
        target.append(clean)
    return np.concatenate(noisy).astype(np.float32), np.concatenate(target).astype(np.float32)


def denoise_data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(noisy, clean) pairs for train (4 noisy copies), calibration and test (2 each)."""
    digits = load_digits(seed=seed)
    return {
        "train": noisy_clean(digits.train.x, copies=4, seed=seed),
        "calibration": noisy_clean(digits.calibration.x, copies=2, seed=seed + 1),
        "test": noisy_clean(digits.test.x, copies=2, seed=seed + 2),
    }


class _Stem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)

    def forward(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.conv(noisy)), noisy


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(h + self.conv2(torch.relu(self.conv1(h)))), noisy


class QualityExit(nn.Module):
    """The enhanced image (noisy minus the predicted noise) and a gate that predicts its
    PSNR against the clean image, in tens of dB (RBQE's quality assessment)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.noise = nn.Conv2d(width, 1, 3, padding=1)
        self.gate = nn.Sequential(nn.Linear(width + 1, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, h: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.noise(h)
        image = noisy - noise
        # what the gate sees: the features, and how much noise this exit removed
        summary = torch.cat([h.mean(dim=(2, 3)), noise.pow(2).mean(dim=(1, 2, 3))[:, None]], 1)
        return image, self.gate(summary).squeeze(1)


def denoiser(width: int = 48, blocks: int = 3) -> MultiExit:
    """A stem exit and one exit after each residual block: ``blocks + 1`` exits."""
    segments = [_Stem(width), *(_Block(width) for _ in range(blocks))]
    return MultiExit(segments, [QualityExit(width) for _ in segments], output="tensor")


def psnr_db(image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, in torch for training: the figure ``per_sample_quality``
    gives calibrate and run (the same peak and cap)."""
    mse = (image - clean).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(PEAK**2 / mse.clamp_min(1e-10))).clamp_max(MAX_PSNR_DB)


def train_denoiser(
    model: MultiExit,
    noisy: np.ndarray,
    clean: np.ndarray,
    *,
    epochs: int = EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[float]:
    """Train every exit's image (summed MSE) and gate (regressing its exit's PSNR / 10,
    with the image detached, so the gate learns to assess, not to change, the output).
    Returns the held-in mean PSNR of each exit after training. ``progress`` counts the
    batches ("training")."""
    tell = or_silent(progress)
    torch.manual_seed(seed)
    x, y = torch.from_numpy(noisy), torch.from_numpy(clean)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(x) // batch_size)
    batches = epochs * per_epoch
    tell("training, batch", 0, batches)
    for epoch in range(epochs):
        for b, rows in enumerate(torch.randperm(len(x), generator=generator).split(batch_size)):
            carry, loss = (x[rows],), 0.0
            for segment, head in zip(model.segments, model.exits):
                carry = segment(*carry)
                image, gate = head(*carry)
                loss = loss + (image - y[rows]).pow(2).mean()
                target = psnr_db(image.detach(), y[rows]) / PSNR_SCALE
                loss = loss + 0.05 * (gate - target).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tell("training, batch", epoch * per_epoch + b + 1, batches)
    model.eval()
    with torch.no_grad():
        outputs = model(x)
    return [float(psnr_db(out, y).mean()) for out in outputs]


@dataclass(frozen=True)
class DenoiseDemo:
    """The calibrated denoiser against the same bundle with every early exit disabled,
    measured side by side on the test split (batch 1, alternating call by call)."""

    out_dir: Path
    calibration: QualityReport
    rows: list[dict[str, Any]]
    noisy_psnr_db: float

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "calibration": self.calibration.to_json(),
                "test": self.rows, "noisy_psnr_db": self.noisy_psnr_db}  # fmt: skip

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.calibration
        table = Table(title=f"denoising the test split, measured ({platform.machine()}, batch 1)")
        for col in ("bundle", "PSNR dB", "vs plain", "ms/image", "speed-up", "exit shares"):
            table.add_column(col, justify="right")
        for r in self.rows:
            table.add_row(
                r["bundle"], f"{r['psnr_db']:.2f}", f"{r['psnr_drop_db']:+.2f}",
                f"{r['mean_latency_ms']:.4f}", f"{r['speedup']:.2f}x",
                ", ".join(f"{s:.0%}" for s in r["exit_shares"]),
            )  # fmt: skip
        table.caption = (
            f"noisy inputs: {self.noisy_psnr_db:.2f} dB; plain: every early exit disabled "
            f"(one graph); bundle: {self.out_dir / 'bundle'}"
        )
        yield table
        out = self.out_dir
        # (bench compares class predictions: not yet for exits that give images)
        yield Text(f"next: edgeexit calibrate {out / 'bundle'} --data {out / 'calibration.npz'} "
                   "--max-quality-drop 1dB")  # fmt: skip


def run_denoise_demo(
    out_dir: Path,
    *,
    max_quality_drop: float = 0.5,
    epochs: int = EPOCHS,
    rounds: int = 3,
    width: int = 48,
    progress: Progress | None = None,
) -> DenoiseDemo:
    """Train the denoiser, export it, calibrate it to a PSNR drop, and measure it on the
    test split against the plain network, in ``out_dir`` (new, empty, or a demo's)."""
    from edgeexit.calibrate.pipeline import calibrate_bundle
    from edgeexit.export import export
    from edgeexit.runtime import Runtime

    tell = or_silent(progress)
    files.check_output(out_dir, "demo")
    data = denoise_data()
    model = denoiser(width=width)
    with one_torch_thread():
        train_denoiser(model, *data["train"], epochs=epochs, progress=tell)
    with files.atomic_dir(out_dir, "demo") as tmp, one_torch_thread():
        (tmp / files.DEMO_MARKER).write_text("written by edgeexit demo --denoise\n")
        export(model, torch.from_numpy(data["train"][0][:2]), tmp / "plain", criterion="gate",
               output="tensor", progress=tell)  # fmt: skip
        np.savez(tmp / "calibration.npz", x=data["calibration"][0], y=data["calibration"][1])
        np.savez(tmp / "test.npz", x=data["test"][0], y=data["test"][1])
        shutil.copytree(tmp / "plain", tmp / "bundle")
        budget = Budget(max_quality_drop=max_quality_drop, quality_metric="psnr")
        report = calibrate_bundle(tmp / "bundle", tmp / "calibration.npz", budget,
                                  progress=tell)  # fmt: skip
        runtimes = {"calibrated": Runtime(tmp / "bundle", threads=1),
                    "plain": Runtime(tmp / "plain", threads=1)}  # fmt: skip
        rows = _side_by_side(runtimes, *data["test"], rounds, tell)
    noisy = float(per_sample_quality(data["test"][0][None], data["test"][1], "psnr").mean())
    return DenoiseDemo(out_dir, report, rows, noisy)


def _side_by_side(runtimes, noisy, clean, rounds: int, tell) -> list[dict[str, Any]]:
    """Each test image through each runtime at batch 1, alternating in a shuffled order."""
    answers, seconds = alternating_calls(
        {name: (lambda n, rt=rt: rt.run(noisy[n : n + 1])) for name, rt in runtimes.items()},
        len(noisy), rounds=rounds, warmup=20,
        progress=lambda done, total: tell("measuring", done, total),
    )  # fmt: skip
    outputs = {name: np.stack([a.outputs[0] for a in got]) for name, got in answers.items()}
    exits = {name: np.array([a.exit_index[0] for a in got]) for name, got in answers.items()}
    plain_psnr = float(per_sample_quality(outputs["plain"][None], clean, "psnr").mean())
    rows = []
    for name in runtimes:
        psnr = float(per_sample_quality(outputs[name][None], clean, "psnr").mean())
        ms = seconds[name].sum() * 1e3 / (rounds * len(noisy))
        num_exits = runtimes[name].num_exits
        rows.append({
            "bundle": name, "psnr_db": psnr, "psnr_drop_db": psnr - plain_psnr,
            "mean_latency_ms": ms,
            "exit_shares": (np.bincount(exits[name], minlength=num_exits) / len(noisy)).tolist(),
        })  # fmt: skip
    plain_ms = next(r["mean_latency_ms"] for r in rows if r["bundle"] == "plain")
    for row in rows:
        row["speedup"] = plain_ms / row["mean_latency_ms"]
    return rows
