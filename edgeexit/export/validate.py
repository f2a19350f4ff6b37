"""Check an exported bundle against its PyTorch model, as Hugging Face Optimum does.

Every segment is run alone under ONNX Runtime, fed the carry PyTorch computed, on the
example inputs and on a batch of another size. Output names, the dynamic batch axis, shapes
and values (each exit's logits and score, and the carry) are compared; every failure is
collected, then one ValidationError is raised carrying the per-segment report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.table import Table
from torch import nn

from edgeexit.bundle import INPUT_SUM, SegmentSpec, read_manifest, verify_segments
from edgeexit.errors import ExportError, ParityError, first_line
from edgeexit.export.model import run_exits
from edgeexit.export.scores import exit_score
from edgeexit.progress import Progress, or_silent
from edgeexit.runtime.session import ORT_ERRORS, cpu_session


@dataclass(frozen=True)
class SegmentCheck:
    """One segment at one batch size: the largest differences from PyTorch, and problems."""

    segment: int
    batch: int
    logits_diff: float
    score_diff: float
    carry_diff: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class ValidationReport:
    """Every segment check, rendered by rich as a per-segment table."""

    atol: float
    checks: tuple[SegmentCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [p for c in self.checks for p in c.problems]

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def __rich_console__(self, console, options):
        table = Table(title=f"validation against PyTorch (atol {self.atol:g})")
        for col in ("segment", "batch", "logits max|diff|", "score max|diff|", "carry max|diff|"):
            table.add_column(col, justify="right")
        table.add_column("")
        for c in self.checks:
            table.add_row(
                str(c.segment),
                str(c.batch),
                *(_diff(d, self.atol) for d in (c.logits_diff, c.score_diff, c.carry_diff)),
                "[green]✓[/green]" if c.ok else "[red]✗[/red]",
            )
        yield table
        for problem in self.problems:  # Optimum-style: every failure, one per line
            yield f"[red]-\\[x][/red] {problem}"


def validate_bundle(
    model: nn.Module,
    bundle_dir: str | os.PathLike,
    example_inputs: Sequence[torch.Tensor],
    *,
    atol: float = 1e-4,
    progress: Progress | None = None,
) -> ValidationReport:
    """Compare every segment of the bundle with the model at two batch sizes; raise
    ValidationError on failure. ``progress`` counts the checks."""
    tell = or_silent(progress)
    manifest = read_manifest(bundle_dir)
    paths = verify_segments(bundle_dir, manifest)
    tell("validating segments", 0, 2 * len(paths))
    sessions = [_session(p) for p in paths]
    model.eval()
    checks = []
    for inputs in (tuple(example_inputs), other_batch(example_inputs)):
        with torch.no_grad():
            steps = run_exits(model, inputs, manifest.output)
        for i, (seg, sess, step) in enumerate(zip(manifest.segments, sessions, steps)):
            want = exit_score(
                manifest.criterion, step.logits, step.gate, step.carry_in[0], step.carry_out[0]
            )
            checks.append(_check(i, seg, sess, step, want, atol))
            tell("validating segments", len(checks), 2 * len(sessions))
    report = ValidationReport(atol, tuple(checks))
    if not report.ok:
        # Each cause once: the same one found again at another batch size says nothing new.
        causes: dict[str, str] = {}
        for problem in report.problems:
            causes.setdefault(problem.split(": ", 1)[-1], problem)
        problems = list(causes.values())
        raise ParityError(
            f"bundle does not match PyTorch within atol {atol:g}: " + "; ".join(problems),
            report=report,
        )
    return report


def other_batch(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A batch of another size (3 more samples), built from the examples so it stays valid.

    Rows are tiled; floating inputs get a little deterministic noise so rows differ.
    """
    n = inputs[0].shape[0]
    index = torch.arange(n + 3) % n
    gen = torch.Generator().manual_seed(0)
    out = []
    for x in inputs:
        y = x[index].clone()
        if y.is_floating_point():
            scale = float(x.float().std()) if x.numel() > 1 else 1.0
            y = y + 0.01 * (scale or 1.0) * torch.randn(y.shape, generator=gen, dtype=y.dtype)
        out.append(y)
    return tuple(out)


def _io_mismatch(i, seg: SegmentSpec, got_inputs, got_outputs, expected) -> str:
    """Why the graph's inputs or outputs are not the manifest's, with what to change."""
    unused = [name for name in seg.inputs if name not in got_inputs]
    if unused:
        k = list(seg.inputs).index(unused[0])
        source = "model input" if i == 0 else f"carry element {k} from segment {i - 1}"
        change = (
            "use it, or leave it out of the model's inputs"
            if i == 0
            else f"use it in segment {i}, or stop returning it from segment {i - 1}"
        )
        return (
            f"segment {i} ignores its input {unused[0]!r} ({source}), and ONNX drops unused "
            f"inputs: {change}"
        )
    missing = [name for name in expected if name not in got_outputs]
    return (
        f"graph inputs/outputs differ from the manifest (missing outputs {missing}, inputs "
        f"{got_inputs} instead of {list(seg.inputs)})"
    )


def _check(i, seg: SegmentSpec, sess, step, want_score, atol: float) -> SegmentCheck:
    batch = int(step.logits.shape[0])
    where = f"segment {i} at batch {batch}"
    problems = []
    expected = [*seg.carry, seg.logits, seg.score]
    # the first graph also sums the model's inputs (INPUT_SUM), read by the runtime only
    got_names = [o.name for o in sess.get_outputs() if o.name != INPUT_SUM]
    got_inputs = [x.name for x in sess.get_inputs()]
    if sorted(got_names) != sorted(expected) or got_inputs != list(seg.inputs):
        problems.append(f"{where}: {_io_mismatch(i, seg, got_inputs, got_names, expected)}")
        return SegmentCheck(i, batch, np.nan, np.nan, np.nan, tuple(problems))
    for x in sess.get_inputs():
        if x.shape and isinstance(x.shape[0], int):
            problems.append(f"{where}: input {x.name} has a fixed batch axis {x.shape[0]}")
    feed = {name: t.numpy() for name, t in zip(seg.inputs, step.carry_in)}
    try:
        outs = dict(zip(expected, sess.run(expected, feed)))
    except ORT_ERRORS as err:  # a graph that loads but cannot run these inputs: a finding
        problems.append(f"{where}: ONNX Runtime cannot run it: {first_line(err)}")
        return SegmentCheck(i, batch, np.nan, np.nan, np.nan, tuple(problems))
    torch_outs = {seg.logits: step.logits, seg.score: want_score}
    torch_outs.update(zip(seg.carry, step.carry_out))
    diffs = {}
    for name, ref in torch_outs.items():
        diff, problem = _compare(outs[name], ref.numpy(), atol)
        diffs[name] = diff
        if problem:
            problems.append(f"{where}: {name} {problem}")
    carry = max((diffs[n] for n in seg.carry), default=np.nan)  # the last passes none
    return SegmentCheck(i, batch, diffs[seg.logits], diffs[seg.score], carry, tuple(problems))


def _compare(got: np.ndarray, ref: np.ndarray, atol: float) -> tuple[float, str | None]:
    if got.shape != ref.shape:
        return np.nan, f"has shape {got.shape}, PyTorch {ref.shape}"
    if got.size == 0:
        return 0.0, None
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    if not diff <= atol:  # also catches NaN
        return diff, f"max abs diff {diff:.3g} > atol {atol:g}"
    return diff, None


def _session(path: Path) -> ort.InferenceSession:
    return cpu_session(path, what=path.name, error=ExportError)


def _diff(value: float, atol: float) -> str:
    if np.isnan(value):
        return "-"
    text = f"{value:.2e}"
    return text if value <= atol else f"[red]{text}[/red]"
