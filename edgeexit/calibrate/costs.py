"""Cost vectors for calibration: what a sample leaving at exit i costs on the device.

The primary figures are per exit: a sample leaving at exit i pays what a runtime call
forced out at i costs (``edgeexit.measure.profiling.measure_exit_costs``: from a profile's
``exits`` block, or measured here by the same function), so the expected latency of a
threshold setting is sum over exits of (share leaving there) x (that exit's cost), the
runtime's per-call overhead included. Only for profiles written before the ``exits``
block existed are segment timings summed instead (segments 0..i), a fallback that leaves
that overhead out and under-predicts small models; its ``source`` says so.

Energy is the measured figure where a sensor gave one, else modeled from the target's power
model; the figure always carries its source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeexit.bundle import Manifest
from edgeexit.energy.provenance import (
    MODELED,
    NONE,
    EnergySource,
    modeled_energy_mj,
    modeled_from,
)
from edgeexit.errors import CalibrationError
from edgeexit.measure.cost_profile import CostProfile, ExitProfile, LinkProfile
from edgeexit.split import read_split

SEGMENT_SUM_NOTE = "segments summed: profile has no per-exit costs, per-call overhead left out"


@dataclass(frozen=True)
class ExitCosts:
    """What a sample leaving at exit i costs, i = 0..E-1: per-exit figures, each never
    below the one before (leaving later runs strictly more; see ``from_measured``).

    ``energy_mj`` is None when neither a sensor nor a power model gives a figure, and
    ``energy`` says which gave it. ``source`` says where the latencies came from (a
    profile path, or 'measured here').
    """

    latency_ms: tuple[float, ...]
    p95_latency_ms: tuple[float, ...]
    energy_mj: tuple[float, ...] | None
    energy: EnergySource
    source: str
    batch_size: int = 1  # samples per call the costs were measured at
    # How far to trust the costs: the widest exit's 95 % interval half-width, relative (0:
    # unknown, e.g. an old profile), and how many exits measured cheaper than an earlier one
    # and were raised to it (timing noise).
    noise: float = 0.0
    clipped: int = 0
    # What each exit's head costs, ms, where the runtime can skip it (its segment runs as
    # its body while the exit is disabled); the latencies above include every head, and a
    # candidate that disables exit j is credited head_ms[j] for samples leaving after j.
    head_ms: tuple[float, ...] | None = None
    # The constant power the energy was modeled with (energy MODELED: W x ms), else None. A
    # skipped head then saves its modeled energy too; a sensor's figures are not split
    # between a block and its head, so measured energy gets no credit (conservative).
    power_w: float | None = None
    # A sample of the full model as deployed, every early exit disabled (the plain graph in
    # one call where the bundle has one): (mean ms, p95 ms, mJ or None). None where it was
    # not measured (old profiles): the heads skipped are credited instead.
    full: tuple[float, float, float | None] | None = None
    # The target whose power model that is (a profile's device, or the target measured
    # here), named wherever the figures are shown; None when the energy is not modeled.
    power_model: str | None = None

    def __post_init__(self) -> None:
        if len(self.latency_ms) != len(self.p95_latency_ms):
            raise CalibrationError("exit costs: median and p95 latency lengths differ")
        if self.head_ms is not None and len(self.head_ms) != len(self.latency_ms):
            raise CalibrationError("exit costs: head and latency lengths differ")
        if self.energy_mj is not None and len(self.energy_mj) != len(self.latency_ms):
            raise CalibrationError("exit costs: energy and latency lengths differ")

    @classmethod
    def from_measured(
        cls,
        latency_ms: np.ndarray,
        p95_latency_ms: np.ndarray,
        energy_mj: np.ndarray | None,
        energy: EnergySource,
        source: str,
        batch_size: int = 1,
        noise: float = 0.0,
        head_ms: Sequence[float | None] | None = None,
        power_w: float | None = None,
        full: tuple[float, float, float | None] | None = None,
        power_model: str | None = None,
    ) -> ExitCosts:
        """From per-exit figures as measured. A later exit measured cheaper than an earlier
        one is timing noise: each figure is raised to the largest before it (a no-op on
        monotone figures, which pass through exactly), and ``clipped`` counts them."""
        return cls(
            latency_ms=_monotone(latency_ms),
            p95_latency_ms=_monotone(p95_latency_ms),
            energy_mj=None if energy_mj is None else _monotone(energy_mj),
            energy=energy,
            source=source,
            batch_size=batch_size,
            noise=noise,
            clipped=int(np.sum(np.asarray(latency_ms) < np.maximum.accumulate(latency_ms))),
            head_ms=_heads(head_ms),
            power_w=power_w if energy == MODELED else None,
            full=full,
            power_model=power_model if energy == MODELED else None,
        )

    @property
    def num_exits(self) -> int:
        return len(self.latency_ms)

    @property
    def energy_origin(self) -> str:
        """Where the energy figures come from, in words: 'measured (rpi5-pmic)', 'modeled
        from rpi5's power model (7 W)', 'modeled' (an unnamed model) or 'none'."""
        if self.energy == MODELED and self.power_model and self.power_w is not None:
            return modeled_from(self.power_model, self.power_w)
        return self.energy.label

    def to_json(self) -> dict[str, Any]:
        """The calibration record in the manifest: each exit's cost (what leaving there
        costs, every head run), each segment's share of it (the differences), and the full
        model as deployed (every early exit disabled) where it was measured."""
        return {
            "source": self.source,
            "batch_size": self.batch_size,
            "noise": self.noise if math.isfinite(self.noise) else None,
            "clipped": self.clipped,
            "exit_latency_ms": list(self.latency_ms),
            "exit_p95_latency_ms": list(self.p95_latency_ms),
            "exit_energy_mj": None if self.energy_mj is None else list(self.energy_mj),
            "segment_share_ms": _diffs(self.latency_ms),
            "full_model_ms": self.full_ms,
            "energy_source": self.energy.label,
            "head_ms": None if self.head_ms is None else list(self.head_ms),
        }

    def per_exit_latency(self, thresholds: np.ndarray, p95: bool = False) -> np.ndarray:
        """[K, E] what leaving at each exit costs under each of K threshold vectors: the
        measured figure, less the heads of the exits before it that the vector disables
        (threshold +inf) and the runtime then skips."""
        table = np.asarray(self.p95_latency_ms if p95 else self.latency_ms, dtype=float)
        if self.head_ms is None:
            costs = np.array(np.broadcast_to(table, thresholds.shape))
        else:
            costs = table[None, :] - self._skipped_heads_ms(thresholds)
        if self.full is not None:  # every early exit disabled: the full model, as measured
            costs[self._all_disabled(thresholds), -1] = self.full[1 if p95 else 0]
        return costs

    @property
    def full_ms(self) -> float:
        """The full model's cost per sample as deployed (every early exit disabled)."""
        return float(self.per_exit_latency(np.full((1, self.num_exits), np.inf))[0, -1])

    @staticmethod
    def _all_disabled(thresholds: np.ndarray) -> np.ndarray:
        return np.isposinf(thresholds[:, :-1]).all(axis=1)

    def per_exit_energy(self, thresholds: np.ndarray) -> np.ndarray | None:
        """[K, E] energy of leaving at each exit under each threshold vector (None without
        an energy figure): modeled energy is credited the skipped heads' modeled energy,
        as latency is their time; measured energy is as measured."""
        if self.energy_mj is None:
            return None
        table = np.asarray(self.energy_mj, dtype=float)
        if self.head_ms is None or self.power_w is None:
            costs = np.array(np.broadcast_to(table, thresholds.shape))
        else:
            costs = table[None, :] - modeled_energy_mj(
                self.power_w, self._skipped_heads_ms(thresholds)
            )
        if self.full is not None:
            full_mj = self.full[2]
            if full_mj is None and self.power_w is not None:
                full_mj = modeled_energy_mj(self.power_w, self.full[0])
            if full_mj is not None:
                costs[self._all_disabled(thresholds), -1] = full_mj
        return costs

    def _skipped_heads_ms(self, thresholds: np.ndarray) -> np.ndarray:
        """[K, E] head time skipped before reaching each exit: the heads of the earlier
        exits that a vector disables (threshold +inf), which the runtime does not run."""
        disabled = np.isposinf(thresholds)
        disabled[:, -1] = False  # the last exit always runs its head
        saved = np.cumsum(disabled * np.asarray(self.head_ms)[None, :], axis=1)
        return np.concatenate([np.zeros((len(thresholds), 1)), saved[:, :-1]], axis=1)


def load_profile_costs(
    path: str | os.PathLike,
    manifest: Manifest,
    *,
    active_power_w: float = 0.0,
    power_model: str | None = None,
) -> ExitCosts:
    """Costs from a device profile (``edgeexit profile -o PROFILE.json``).

    The profile must describe this bundle's segments (same files and sha256). Latency and
    energy come from its per-exit costs (``exit_costs``); a profile without them (written
    before they existed) falls back to summing its segments, and ``source`` says so. Energy
    is used where the device measured it (per call, divided by the profile's batch size);
    otherwise it is modeled from the profile's power model (or ``active_power_w``, that of
    the target named ``power_model``), and the costs name the one used.
    """
    profile = CostProfile.load(path)
    ours = [(s.file, s.sha256) for s in manifest.segments]
    theirs = [(s.file, s.sha256) for s in profile.segments]
    if ours != theirs[: len(ours)]:  # a capped chain (max_exit) plans with its exits only
        raise CalibrationError(
            f"profile {path} was measured on another bundle (its segment files or sha256 "
            "differ); profile this bundle with `edgeexit profile`"
        )
    power_w = profile.power_model_w.get("active", 0.0) or active_power_w
    if profile.power_model_w.get("active", 0.0):  # the profiled device's model, not ours
        power_model = profile.target
    if len(ours) < len(theirs):  # leaving at exit i costs the same whatever follows i
        profile = replace(profile, segments=profile.segments[: len(ours)],
                          exits=profile.exits[: len(ours)], full=None)  # fmt: skip
    link = profile.link
    if len(profile.exits) == len(profile.segments):
        costs = exit_costs(
            profile.exits,
            batch_size=profile.batch_size,
            energy=profile.energy_provenance,
            power_w=power_w,
            source=f"profile {path}",
            head_ms=[seg.head_ms for seg in profile.segments],
            full=profile.full,
            power_model=power_model,
        )
    else:
        source = f"profile {path} ({SEGMENT_SUM_NOTE})"
        costs = _segment_sum_costs(profile, power_w, source, power_model)
    return costs if link is None else _with_link(costs, link, manifest, path)


def _with_link(costs: ExitCosts, link: LinkProfile, manifest: Manifest, path) -> ExitCosts:
    """A split bundle's costs: an exit on the server costs the device's part up to the split
    exit, plus one sample's offload as measured over the link (its carry up, the server's
    segments, the answer back). The device's energy stops at the split exit: its radio is
    not in the figure."""
    if "split" not in manifest.extra:
        raise CalibrationError(
            f"profile {path} measured a link to a server, but this bundle is not split: "
            "split it (edgeexit split) or profile it without --link"
        )
    split = read_split(manifest)
    if (split.at, split.encoding) != (link.at, link.encoding):
        raise CalibrationError(
            f"profile {path} measured the link for a split after exit {link.at} "
            f"({link.encoding}); this bundle is split after exit {split.at} "
            f"({split.encoding}): measure the link again (edgeexit profile BUNDLE --link URL)"
        )
    at, n = split.at, len(costs.latency_ms)
    server = range(at + 1, n)

    def offloaded(values, extra: float) -> tuple[float, ...]:
        return tuple(values[at] + extra if i in server else values[i] for i in range(n))

    energy = costs.energy_mj
    return replace(
        costs,
        latency_ms=offloaded(costs.latency_ms, link.offload_ms.median),
        p95_latency_ms=offloaded(costs.p95_latency_ms, link.offload_ms.p95),
        energy_mj=None if energy is None else offloaded(energy, 0.0),
        # the device never runs the server's heads: nothing to credit for disabling them
        head_ms=None
        if costs.head_ms is None
        else tuple(0.0 if i in server else h for i, h in enumerate(costs.head_ms)),  # fmt: skip
        source=f"{costs.source}; exits {at + 1}-{n - 1} on the server {link.url}: exit {at} "
        f"plus one sample's offload, {link.offload_ms.median:.2f} ms (p95 "
        f"{link.offload_ms.p95:.2f}) measured over the link",
    )


def _segment_sum_costs(
    profile: CostProfile, power_w: float, source: str, power_model: str | None
) -> ExitCosts:
    """Fallback for old profiles: a sample leaving at i costs segments 0..i timed alone."""
    median = np.cumsum([s.latency_ms.median for s in profile.segments])
    p95 = np.cumsum([s.latency_ms.p95 for s in profile.segments])
    energies = [s.energy_mj for s in profile.segments]
    if profile.energy_provenance.measured and all(e is not None for e in energies):
        energy_mj, energy = np.cumsum(energies) / profile.batch_size, profile.energy_provenance
    elif power_w > 0:
        energy_mj, energy = modeled_energy_mj(power_w, median), MODELED
    else:
        energy_mj, energy = None, NONE
    return ExitCosts.from_measured(median, p95, energy_mj, energy, source, profile.batch_size,
                                   power_w=power_w, power_model=power_model)  # fmt: skip


def exit_costs(
    exits: Sequence[ExitProfile],
    *,
    batch_size: int,
    energy: EnergySource,
    power_w: float,
    source: str,
    head_ms: Sequence[float | None] | None = None,
    full: ExitProfile | None = None,
    power_model: str | None = None,
) -> ExitCosts:
    """Costs per sample from per-exit call costs (``measure_exit_costs``, a profile's exits).

    Mean latency from each exit's ``robust_mean`` (the median over rounds of each round's
    mean): of the figures a profile holds, the one that predicted deployments as ``bench``
    measures them (benchmarks/cost_statistic.py: within a few percent on a busy 2-core
    machine, where the 20th percentile of round means, which assumes an idle machine,
    was up to 16 % low and moved the speed-ups between profiles); p95 from its p95.
    ``full``: the full model as deployed (every early exit disabled), where measured.
    Energy: measured per call where every exit has a figure, divided by ``batch_size``;
    else ``power_w`` (the power model of the target named ``power_model``) x latency,
    labeled modeled; else none.
    """
    latency = np.array([e.latency_ms.robust_mean for e in exits])
    p95 = np.array([e.latency_ms.p95 for e in exits])
    measured = [e.energy_mj for e in exits]
    if exits and energy.measured and all(m is not None for m in measured):
        energy_mj = np.array(measured) / batch_size
    elif power_w > 0:
        energy_mj, energy = modeled_energy_mj(power_w, latency), MODELED
    else:
        energy_mj, energy = None, NONE
    noise = max((e.latency_ms.spread for e in exits), default=0.0)
    full_figures = None
    if full is not None:
        full_mj = None
        if energy.measured and full.energy_mj is not None:
            full_mj = full.energy_mj / batch_size
        full_figures = (full.latency_ms.robust_mean, full.latency_ms.p95, full_mj)
    return ExitCosts.from_measured(
        latency, p95, energy_mj, energy, source, batch_size, noise, head_ms=head_ms,
        power_w=power_w, power_model=power_model, full=full_figures,
    )  # fmt: skip


def _heads(head_ms: Sequence[float | None] | None) -> tuple[float, ...] | None:
    """Per-exit head costs with None as 0 (no body: nothing to skip); None if no exit has
    one."""
    if head_ms is None or all(h is None for h in head_ms):
        return None
    return tuple(0.0 if h is None else float(h) for h in head_ms)


def _monotone(per_exit: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.maximum.accumulate(np.asarray(per_exit, dtype=float)))


def _diffs(per_exit: tuple[float, ...]) -> list[float]:
    return [float(v) for v in np.diff(per_exit, prepend=0.0)]
