"""What a runtime call returns, rendering itself for the CLI (rich) and for scripts (JSON)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from edgeexit.energy.provenance import NONE, EnergySource, modeled_energy_mj

MAX_ROWS_SHOWN = 20


class Result:
    """One ``Runtime.run`` call.

    ``logits`` [batch, classes]: each row from the exit its sample took.
    ``exit_index`` [batch]: that exit (may be a shared read-only array: copy it before
    writing to it). ``latency_ms``: wall time of the call, from its start to the end of
    its last segment. ``energy_mj``: the call's energy, and ``energy_provenance`` where it
    comes from (an ``EnergySource``: measured by a named sensor, modeled from the target's
    power figure, or none, with ``energy_mj`` None); ``energy_source`` ('rapl', 'modeled'
    or 'none') and ``energy_measured`` say the same in words. ``segment_ms``: time of each
    segment's call within this one (0 for segments no sample reached; NaN for those that
    ran inside the bundle's plain graph, whose time is the last segment's).

    A plain class with ``__slots__``, not a dataclass: this is made on every call. Right
    after the segments have run, the interpreter's code and data are out of the caches and
    every Python step costs microseconds (docs/runtime.md), so the runtime's fast path
    builds the Result *before* the segments run (``logits`` None, set after) and hands it
    only the clock readings: ``stamps`` (perf_counter seconds before the first segment
    and after each) and ``t0`` (the call's start). ``latency_ms``, ``segment_ms`` and a modeled
    ``energy_mj`` are then worked out on first access, from the same readings, so they are
    the figures an eager computation would give. ``done`` builds one after the segments.
    """

    __slots__ = (
        "logits",
        "exit_index",
        "energy_provenance",
        "_latency_ms",
        "_energy_mj",
        "_power_w",
        "_t0",
        "_segment_ms",
        "_stamps",
    )

    def __init__(
        self,
        logits: np.ndarray | None,
        exit_index: np.ndarray,
        energy_provenance: EnergySource,
        latency_ms: float | None,
        energy_mj: float | None,
        power_w: float | None,
        segment_ms: Sequence[float] | None,
        stamps: list[float] | None,
        t0: float | None,
    ) -> None:
        self.logits = logits
        self.exit_index = exit_index
        self.energy_provenance = energy_provenance
        self._latency_ms = latency_ms  # None: from t0 to the last stamp
        self._energy_mj = energy_mj  # None with power_w: modeled from the latency
        self._power_w = power_w
        self._segment_ms = segment_ms  # None: from the stamps
        self._stamps = stamps
        self._t0 = t0

    @classmethod
    def done(
        cls,
        logits: np.ndarray,
        exit_index: np.ndarray,
        energy_provenance: EnergySource,
        latency_ms: float,
        energy_mj: float | None,
        power_w: float | None,
        segment_ms: Sequence[float] | None = None,
        stamps: list[float] | None = None,
    ) -> Result:
        """A finished call's result: ``energy_mj`` measured, or None to model it from
        ``power_w``; per-segment times as ``segment_ms`` or as ``stamps``."""
        return cls(
            logits, exit_index, energy_provenance, latency_ms, energy_mj, power_w,
            segment_ms, stamps, None,
        )  # fmt: skip

    @property
    def latency_ms(self) -> float:
        if self._latency_ms is None:
            self._latency_ms = (self._stamps[-1] - self._t0) * 1e3
        return self._latency_ms

    @property
    def energy_mj(self) -> float | None:
        if self._energy_mj is None and self._power_w is not None:
            self._energy_mj = modeled_energy_mj(self._power_w, self.latency_ms)
        return self._energy_mj

    @property
    def segment_ms(self) -> tuple[float, ...]:
        segment_ms = self._segment_ms
        if segment_ms is None:
            stamps = self._stamps
            segment_ms = self._segment_ms = tuple((b - a) * 1e3 for a, b in zip(stamps, stamps[1:]))
        elif type(segment_ms) is not tuple:
            segment_ms = self._segment_ms = tuple(segment_ms)
        return segment_ms

    @property
    def energy_source(self) -> str:
        """'rapl' (or another sensor), 'modeled' or 'none'."""
        return self.energy_provenance.name

    @property
    def energy_measured(self) -> bool:
        return self.energy_provenance.measured

    def __repr__(self) -> str:
        return (
            f"Result(exit_index={self.exit_index!r}, latency_ms={self.latency_ms:.4f}, "
            f"energy_mj={self.energy_mj!r}, energy_source={self.energy_source!r})"
        )

    @property
    def outputs(self) -> np.ndarray:
        """Each sample's output from the exit it took (``logits`` by another name, which
        reads better for a bundle whose exits give images or other tensors)."""
        return self.logits

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def energy_label(self) -> str:
        """'measured (rapl)', 'modeled' or 'none': a modeled figure never reads as measured."""
        return NONE.label if self.energy_mj is None else self.energy_provenance.label

    def exit_counts(self) -> list[int]:
        return np.bincount(self.exit_index, minlength=len(self.segment_ms)).tolist()

    def to_json(self) -> dict[str, Any]:
        return {
            **self._answer_json(),
            "exit_index": self.exit_index.tolist(),
            "exit_counts": self.exit_counts(),
            "latency_ms": self.latency_ms,
            "energy_mj": self.energy_mj,
            "energy_source": self.energy_source,
            "energy_measured": self.energy_measured,
            "segment_ms": [None if math.isnan(ms) else ms for ms in self.segment_ms],
        }

    def _answer_json(self) -> dict[str, Any]:
        return {"predictions": self.predictions.tolist()}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._samples_table()
        yield from self._summary()

    def _samples_table(self) -> Table:
        table = Table(title=f"{len(self.exit_index)} samples")
        for col in ("sample", "prediction", "exit"):
            table.add_column(col, justify="right")
        shown = min(len(self.exit_index), MAX_ROWS_SHOWN)
        for b, (pred, exit_i) in enumerate(zip(self.predictions[:shown], self.exit_index)):
            table.add_row(str(b), str(int(pred)), str(int(exit_i)))
        if shown < len(self.exit_index):
            table.add_row("…", f"{len(self.exit_index) - shown} more", "")
        return table

    def _summary(self) -> RenderResult:
        counts = ", ".join(f"exit {i}: {c}" for i, c in enumerate(self.exit_counts()))
        energy = "n/a" if self.energy_mj is None else f"{self.energy_mj:.4f} mJ"
        yield f"exits        {counts}"
        yield f"latency      {self.latency_ms:.3f} ms"
        yield f"energy       {energy} ({self.energy_label})"
        times = ", ".join("-" if math.isnan(ms) else f"{ms:.3f}" for ms in self.segment_ms)
        inside = " (one graph: the plain network)" if math.isnan(self.segment_ms[0]) else ""
        yield f"segments     {times} ms{inside}"


class TensorResult(Result):
    """A ``Runtime.run`` call on a bundle whose exits give tensors (images, vectors,
    per-token logits) rather than class logits: ``outputs`` holds each sample's output from
    the exit it took; there are no predictions (an argmax of pixels means nothing)."""

    __slots__ = ()

    @property
    def predictions(self) -> np.ndarray:
        raise AttributeError(
            "this bundle's exits give tensors, not class logits: there are no predictions; "
            "read `outputs`"
        )

    def _answer_json(self) -> dict[str, Any]:
        return {"output_shape": list(self.logits.shape)}

    def _samples_table(self) -> Table:
        table = Table(title=f"{len(self.exit_index)} samples, outputs {tuple(self.logits.shape)}")
        for col in ("sample", "exit", "output mean", "output min..max"):
            table.add_column(col, justify="right")
        shown = min(len(self.exit_index), MAX_ROWS_SHOWN)
        for b in range(shown):
            row = self.logits[b]
            table.add_row(str(b), str(int(self.exit_index[b])), f"{row.mean():.4g}",
                          f"{row.min():.4g}..{row.max():.4g}")  # fmt: skip
        if shown < len(self.exit_index):
            table.add_row("…", f"{len(self.exit_index) - shown} more", "", "")
        return table


class TokenResult(Result):
    """A ``Runtime.run`` call on a bundle with per-token exits: ``logits`` [batch, tokens,
    classes] and ``exit_index`` [batch, tokens], each token's from the exit it took."""

    __slots__ = ()

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=-1)

    def exit_counts(self) -> list[int]:
        """Tokens leaving at each exit, over the batch."""
        return np.bincount(self.exit_index.ravel(), minlength=len(self.segment_ms)).tolist()

    def _samples_table(self) -> Table:
        table = Table(
            title=f"{len(self.exit_index)} samples, {self.exit_index.shape[1]} tokens each"
        )
        for col in ("sample", "predictions (first tokens)", "tokens per exit"):
            table.add_column(col, justify="right")
        exits = len(self.segment_ms)
        for b in range(min(len(self.exit_index), MAX_ROWS_SHOWN)):
            first = " ".join(str(int(p)) for p in self.predictions[b][:12])
            counts = np.bincount(self.exit_index[b], minlength=exits).tolist()
            table.add_row(str(b), first, " / ".join(str(c) for c in counts))
        return table


@dataclass(frozen=True)
class ExitOutputs:
    """Every sample through every exit (``Runtime.run_all_exits``), for calibration.

    ``logits`` float32 [num_exits, N, C]; ``scores`` float32 [num_exits, N] (the patience
    counters for the ``patience`` criterion); ``segment_ms_per_sample`` the mean time per
    sample of each segment over the pass, in ms.
    """

    logits: np.ndarray
    scores: np.ndarray
    segment_ms_per_sample: tuple[float, ...]
