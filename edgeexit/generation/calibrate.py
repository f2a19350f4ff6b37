"""Choose how a decoder bundle generates on this device, from measurements on prompts.

- **Self-speculative**: the draft depth ``k``, the draft length ``gamma`` and the draft
  stop are searched by measured tokens/s on the calibration prompts, against ``full`` in
  the same run (rounds alternate the two). The output does not depend on the choice
  (greedy self-speculative decoding is the full model's), so speed alone decides.
- **Early-exit**: a confidence threshold per exit but the last, as low as keeps the
  agreement with ``full`` on the calibration prompts at or above ``min_agreement`` at its
  lower bound (90 % one-sided, bootstrapped over prompts: 32 prompts are few, and the mean
  alone overshot held-out by 15 points on the demo). Agreement is measured as deployed
  (free-running: one early token that differs changes the rest, which a teacher-forced
  measure would not see; on the demo model teacher-forced 90 % was 43 % free-running).
  Then the chosen thresholds run on held-out prompts, and the report says whether the
  agreement held there, with its margin.

The choice is written into the manifest (``generation``); ``Generator.generate`` uses it
when no setting is passed. A run that writes holds the bundle's lock (``files.locked``)
from before it opens the bundle until the choice is written, so a second calibration, or
an export onto the bundle, is refused instead of losing a result or pairing settings
measured on one model with another.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit import files
from edgeexit.bundle import thresholds_json
from edgeexit.errors import CalibrationError
from edgeexit.generation.generator import Generator, SpeculativeOptions
from edgeexit.generation.manifest import (
    DecoderManifest,
    read_decoder_manifest,
    write_decoder_manifest,
)
from edgeexit.generation.options import is_number
from edgeexit.measure.rounds import alternating_calls
from edgeexit.measure.verdict import resample

GAMMAS = (2, 3, 4, 6, 8, 10)
SPEED_PROMPTS = 8  # prompts the self-speculative settings are timed on
DRAFT_STOPS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
FINALISTS, FINAL_ROUNDS = 3, 6  # the best settings, timed again for this many rounds
THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 21), 3))
CONFIDENCE = 0.9  # the agreement budget must hold at this one-sided bootstrap bound


@dataclass(frozen=True)
class GenerationReport:
    """What ``calibrate_generation`` chose and measured."""

    self_speculative: dict[str, Any]  # k, gamma, draft_stop
    speculative_speedup: float  # tokens/s against full, on the calibration prompts
    early_exit: tuple[float, ...]  # thresholds, one per exit but the last
    min_agreement: float
    calibration_agreement: float  # free-running, on the calibration prompts
    calibration_bound: float  # its lower bound at CONFIDENCE, bootstrapped over prompts
    held_out_agreement: float | None  # free-running, on the held-out prompts
    early_exit_speedup: float | None  # tokens/s against full, held-out prompts
    mean_exit_depth: float | None
    held: bool | None  # held-out agreement >= min_agreement; None without held-out prompts
    tried: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["early_exit"] = thresholds_json(self.early_exit)
        return doc

    def lines(self) -> list[str]:
        spec = self.self_speculative
        out = [
            f"self-speculative: k={spec['k']}, gamma={spec['gamma']}, draft stop "
            f"{spec['draft_stop']:g}: {self.speculative_speedup:.2f}x full's tokens/s "
            "(output identical to full)",
            f"early-exit: thresholds {', '.join(f'{t:g}' for t in self.early_exit)}; "
            f"agreement with full {self.calibration_agreement:.1%} on the calibration prompts, "
            f"at least {self.calibration_bound:.1%} at {CONFIDENCE:.0%} confidence (bootstrap "
            f"over prompts; budget >= {self.min_agreement:.0%})",
        ]
        if self.held is not None:
            word = "met" if self.held else "MISSED"
            margin = self.held_out_agreement - self.min_agreement
            out.append(
                f"held-out, as deployed: agreement {self.held_out_agreement:.1%} ({word}, "
                f"margin {margin:+.1%}), {self.early_exit_speedup:.2f}x full's tokens/s, "
                f"mean exit depth {self.mean_exit_depth:.0%}"
            )
        return out


def calibrate_generation(
    bundle_dir: str | os.PathLike,
    prompts: Sequence[Sequence[int]],
    *,
    held_out: Sequence[Sequence[int]] = (),
    max_new_tokens: int = 32,
    min_agreement: float = 0.9,
    target: str | None = None,
    threads: int | None = None,
    write: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> GenerationReport:
    """Measure, choose and (with ``write``) record the generation settings of a bundle."""
    if not prompts:
        raise CalibrationError("no calibration prompts; expected at least one")
    if not is_number(min_agreement) or not 0 < min_agreement <= 1:
        raise CalibrationError(
            f"`min_agreement` is {min_agreement!r}; expected a fraction in (0, 1]"
        )
    read_decoder_manifest(bundle_dir)  # a clear error for a path that is no bundle, first
    with files.locked(bundle_dir, "calibrate") if write else contextlib.nullcontext() as lock:
        generator = Generator(bundle_dir, target=target, threads=threads)
        tell = progress or (lambda stage, done, total: None)
        # speed needs few prompts (the output does not change); agreement needs many
        spec, speedup, tried = _choose_speculative(
            generator, prompts[:SPEED_PROMPTS], max_new_tokens, tell
        )
        thresholds, agreement = _choose_thresholds(
            generator, prompts, max_new_tokens, min_agreement, tell
        )
        held = _held_out(generator, held_out, max_new_tokens, thresholds) if held_out else None
        report = GenerationReport(
            self_speculative=asdict(spec),
            speculative_speedup=speedup,
            early_exit=thresholds,
            min_agreement=min_agreement,
            calibration_agreement=agreement.mean,
            calibration_bound=agreement.lower(),
            held_out_agreement=None if held is None else held[0],
            early_exit_speedup=None if held is None else held[1],
            mean_exit_depth=None if held is None else held[2],
            held=None if held is None else held[0] >= min_agreement,
            tried=tried,
        )
        if write:
            lock.check()  # still the bundle measured, not one swapped in around it
            _record(Path(bundle_dir), report, generator.manifest)
    return report


def _choose_speculative(generator, prompts, new, tell):
    """Every (k, gamma, draft stop) runs once over the prompts, in a seeded shuffled order;
    its time is then *modeled* from what it did, and the FINALISTS best by the model are
    timed against full decoding, alternating, FINAL_ROUNDS times: the fastest measured wins.

    The model: for each draft depth k, seconds = prefill + a * draft steps + b *
    verifications, fitted by least squares over all of that k's settings (what a setting
    does does not depend on timing: its drafts and verifications are fixed by the prompts).
    One timing of one setting is within ~10 % of another run's on a shared machine, as much
    as the settings differ; the fit pools every timing of a depth into two costs, so the
    ranking is by what each setting does, priced at costs measured across the whole
    screen. The stop is searched at every gamma because it pays at long drafts (Kangaroo):
    the demo model ran 1.60x full at gamma=8 with stop 0.3 and 1.49x at gamma=4 with no
    stop (the best without one), which a search of the stop at one gamma did not find."""
    k_values = range(1, generator.num_exits)
    grid = list(itertools.product(k_values, GAMMAS, DRAFT_STOPS))
    order = np.random.default_rng(0).permutation(len(grid))
    tried: list[dict[str, Any]] = []
    total = len(grid) + FINALISTS

    for i in order:
        options = SpeculativeOptions(*grid[i])
        runs = [generator.generate(p, max_new_tokens=new, mode="self-speculative",
                                   speculative=options) for p in prompts]  # fmt: skip
        tried.append({**asdict(options), "seconds": sum(r.seconds for r in runs),
                      "draft_steps": sum(r.draft_steps for r in runs),
                      "verifications": sum(r.verifications for r in runs)})  # fmt: skip
        tell("self-speculative settings", len(tried), total)
    _model_seconds(tried)
    finalists = sorted(tried, key=lambda t: t["modeled_seconds"])[:FINALISTS]
    again = {}
    for entry in finalists:
        options = SpeculativeOptions(entry["k"], entry["gamma"], entry["draft_stop"])
        again[options] = entry["speedup"] = _speed_ratio(
            generator, prompts, new, options, FINAL_ROUNDS
        )
        entry["rounds"] = FINAL_ROUNDS
        tell("self-speculative settings", len(tried) + len(again), total)
    best = max(again, key=again.get)
    return best, again[best], tried


def _model_seconds(tried: list[dict[str, Any]]) -> None:
    """Add ``modeled_seconds`` to each screened setting: per draft depth k, the least-squares
    fit of seconds = prefill + a * draft steps + b * verifications. Where a depth has too
    few settings for the fit, or the fit prices a step below zero (timings too noisy to
    tell), a setting's own timing stands."""
    for k in {t["k"] for t in tried}:
        rows = [t for t in tried if t["k"] == k]
        x = np.array([[1.0, t["draft_steps"], t["verifications"]] for t in rows])
        y = np.array([t["seconds"] for t in rows])
        coef = np.linalg.lstsq(x, y, rcond=None)[0] if len(rows) > x.shape[1] else None
        sane = coef is not None and coef[1] >= 0 and coef[2] >= 0
        for t, seconds in zip(rows, x @ coef if sane else y):
            t["modeled_seconds"] = float(seconds)


def _speed_ratio(generator, prompts, new, options, rounds: int) -> float:
    """Speculative over full tokens/s, the two alternating prompt by prompt in a shuffled
    order (``alternating_calls``), ``rounds`` times over the prompts."""
    _, seconds = alternating_calls(
        {"full": lambda p: generator.generate(prompts[p], max_new_tokens=new),
         "speculative": lambda p: generator.generate(prompts[p], max_new_tokens=new,
                                                     mode="self-speculative",
                                                     speculative=options)},
        len(prompts), rounds=rounds,
    )  # fmt: skip
    return float(seconds["full"].sum() / seconds["speculative"].sum())


@dataclass(frozen=True)
class Agreement:
    """Early-exit decoding against full decoding on a set of prompts, prompt by prompt."""

    same: np.ndarray  # tokens equal to full decoding's, per prompt
    total: np.ndarray  # positions compared, per prompt
    depth: float  # mean exit depth over generated tokens (1: the last exit)

    @property
    def mean(self) -> float:
        return float(self.same.sum() / self.total.sum())

    def lower(self, confidence: float = CONFIDENCE) -> float:
        """One-sided bootstrap bound over prompts (the unit that varies: one early token
        that differs changes the rest of its prompt): the agreement is at least this with
        ``confidence``, as far as the prompts represent what will be generated."""
        index = resample(len(self.same))
        ratios = self.same[index].sum(axis=1) / np.maximum(self.total[index].sum(axis=1), 1)
        return float(np.quantile(ratios, 1 - confidence))


def _choose_thresholds(generator, prompts, new, min_agreement, tell):
    """Per-exit thresholds whose agreement with full decoding on the calibration prompts
    reaches the budget at its lower bound (``Agreement.lower``), exiting as early as that
    allows. First one threshold shared by every exit, tried from the top down, stopping at
    the first that misses (agreement falls as the threshold does); then each exit's own
    threshold lowered further, one exit at a time, while the bound holds and the mean exit
    depth falls (a deeper exit may take a lower threshold than a shallow one)."""
    full = [generator.generate(p, max_new_tokens=new).tokens for p in prompts]
    n = generator.num_exits - 1
    tried, most = 0, len(THRESHOLDS) * (n + 1)  # the search usually stops well before

    def measure(thresholds: tuple[float, ...]) -> Agreement:
        nonlocal tried
        outs = [generator.generate(p, max_new_tokens=new, mode="early-exit",
                                   thresholds=thresholds) for p in prompts]  # fmt: skip
        tried += 1
        tell("early-exit thresholds", tried, most)
        same = [sum(a == b for a, b in zip(f, o.tokens)) for f, o in zip(full, outs)]
        total = [max(len(f), len(o.tokens)) for f, o in zip(full, outs)]
        depth = float(np.mean([o.mean_exit_depth(generator.num_exits) for o in outs]))
        return Agreement(np.array(same), np.array(total), depth)

    ones = np.ones(len(prompts))
    chosen, best = (math.inf,) * n, Agreement(ones, ones, 1.0)
    for threshold in THRESHOLDS[::-1]:
        measured = measure((threshold,) * n)
        if measured.lower() < min_agreement:
            break
        chosen, best = (threshold,) * n, measured
    for e in range(n):
        for threshold in (t for t in THRESHOLDS[::-1] if t < chosen[e]):
            candidate = chosen[:e] + (threshold,) + chosen[e + 1 :]
            measured = measure(candidate)
            if measured.lower() < min_agreement:
                break
            if measured.depth < best.depth:
                chosen, best = candidate, measured
    return chosen, best


def token_agreement(full: Sequence[Sequence[int]], outs: Sequence[Sequence[int]]) -> float:
    """Share of positions where a sequence has full decoding's token (a missing or extra
    token counts as a miss)."""
    same = sum(sum(a == b for a, b in zip(f, o)) for f, o in zip(full, outs))
    total = sum(max(len(f), len(o)) for f, o in zip(full, outs))
    return same / total if total else 1.0


def _held_out(generator, prompts, new, thresholds):
    """(agreement, speed-up, mean exit depth) of early-exit decoding as deployed."""
    answers, _ = alternating_calls(
        {"full": lambda p: generator.generate(prompts[p], max_new_tokens=new),
         "early": lambda p: generator.generate(prompts[p], max_new_tokens=new,
                                               mode="early-exit", thresholds=thresholds)},
        len(prompts),
    )  # fmt: skip
    fulls, earlies = answers["full"], answers["early"]
    agreement = token_agreement([f.tokens for f in fulls], [e.tokens for e in earlies])
    speedup = tokens_per_s(earlies) / tokens_per_s(fulls)
    depth = float(np.mean([e.mean_exit_depth(generator.num_exits) for e in earlies]))
    return agreement, speedup, depth


def tokens_per_s(outs) -> float:
    return sum(len(o.tokens) for o in outs) / sum(o.seconds for o in outs)


def _record(bundle: Path, report: GenerationReport, measured: DecoderManifest) -> None:
    """Write the choice into the manifest (the caller holds the lock), if its graphs are
    still the ones measured: a process that does not take the lock may have replaced them."""
    manifest = read_decoder_manifest(bundle)
    if manifest.all_graphs != measured.all_graphs:
        raise CalibrationError(
            f"{bundle}'s graphs changed while they were measured; nothing was recorded: "
            "calibrate the bundle again"
        )
    choice = {
        "self_speculative": report.self_speculative,
        "early_exit": thresholds_json(report.early_exit),
        "report": {k: v for k, v in report.to_json().items() if k != "tried"},
    }
    write_decoder_manifest(bundle, manifest.with_generation(choice))
