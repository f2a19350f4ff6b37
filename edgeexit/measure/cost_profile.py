"""A cost profile: what a bundle was measured to cost on one device (``edgeexit profile -o
PROFILE.json``), the one document the device hands the host. Calibration plans exits for a
device it is not running on from it.

Not to be confused with a target spec (``edgeexit.targets``): what a device is. The JSON
format, ``edgeexit.profile/1``, is described in docs/targets.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table

from edgeexit import documents, files
from edgeexit.energy.provenance import NONE, EnergySource
from edgeexit.errors import TargetError
from edgeexit.measure.rounds import median_spread, uncontended

FORMAT = "edgeexit.profile/1"
IDLE_WINDOW_S = 0.5  # how long the idle baseline is measured, when a sensor exists


@dataclass(frozen=True)
class LatencyStats:
    """One segment's latency over the timed repetitions, in milliseconds."""

    median: float
    p95: float
    mean: float
    min: float

    @classmethod
    def of(cls, latencies_ms: np.ndarray) -> LatencyStats:
        return cls(
            median=float(np.median(latencies_ms)),
            p95=float(np.percentile(latencies_ms, 95)),
            mean=float(np.mean(latencies_ms)),
            min=float(np.min(latencies_ms)),
        )


@dataclass(frozen=True)
class LinkProfile:
    """A split bundle's link, measured from the device (``profile --link URL``): the round
    trip with no work (``rtt_ms``), one sample's offload end to end (its carry up, the
    server's segments, the answer back: ``offload_ms``), and ``batch_rows`` samples'
    (``batch_offload_ms``), whose extra bytes over the extra time give the effective
    throughput (the server's compute included: a lower bound on the link's)."""

    url: str
    at: int
    encoding: str
    carry_bytes: int
    requests: int
    rtt_ms: LatencyStats
    offload_ms: LatencyStats
    batch_rows: int
    batch_offload_ms: LatencyStats
    effective_mbit_s: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # its latency figures as objects, as segments' are

    @classmethod
    def from_json(cls, doc: Any) -> LinkProfile:
        if not isinstance(doc, dict):
            raise ValueError(f"link must be an object, got {type(doc).__name__}")
        return cls(
            url=_text(doc["url"], "link url"),
            at=_count(doc["at"], "link at", 0),
            encoding=_text(doc["encoding"], "link encoding"),
            carry_bytes=_count(doc["carry_bytes"], "link carry_bytes", 1),
            requests=_count(doc["requests"], "link requests", 1),
            rtt_ms=LatencyStats(**_figures(doc["rtt_ms"], LatencyStats)),
            offload_ms=LatencyStats(**_figures(doc["offload_ms"], LatencyStats)),
            batch_rows=_count(doc["batch_rows"], "link batch_rows", 1),
            batch_offload_ms=LatencyStats(**_figures(doc["batch_offload_ms"], LatencyStats)),
            effective_mbit_s=_optional_figure(doc.get("effective_mbit_s"), "effective_mbit_s"),
        )


@dataclass(frozen=True)
class ExitLatency:
    """Latency of a call whose samples all leave at one exit, in milliseconds.

    ``robust_mean`` is the median over rounds of each round's mean (median of means): it
    estimates the mean a deployed sample pays, while one round hit by a burst of load from
    other processes cannot move it. ``spread`` says how far to trust it: the half-width of
    its 95 % interval, relative to it. ``uncontended`` is the 20th percentile of the round
    means: on a shared machine other processes slow whole stretches of rounds (up to 2x on
    a 2-core VM, for seconds), which moves even a median from run to run, while the fast
    rounds recur at the same speed (within 2 % over 3 s runs): calibration plans with it.
    Both are 0 in profiles written before they existed.
    """

    median: float
    p95: float
    mean: float
    min: float
    robust_mean: float
    spread: float = 0.0
    uncontended: float = 0.0

    @classmethod
    def of(cls, rounds_ms: Sequence[np.ndarray]) -> ExitLatency:
        """From each round's call latencies (a sensor's window may lengthen some rounds)."""
        flat = np.concatenate(rounds_ms)
        means = [float(np.mean(r)) for r in rounds_ms]
        return cls(
            median=float(np.median(flat)),
            p95=float(np.percentile(flat, 95)),
            mean=float(np.mean(flat)),
            min=float(np.min(flat)),
            robust_mean=float(np.median(means)),
            spread=median_spread(means),
            uncontended=float(uncontended(means)),
        )


@dataclass(frozen=True)
class ExitProfile:
    """The cost of one call (one batch) whose samples all leave at exit ``index``."""

    index: int
    latency_ms: ExitLatency
    energy_mj: float | None  # measured, per call; None without a sensor
    power_w: float | None  # measured average over the windows (includes the idle baseline)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "latency_ms": vars(self.latency_ms),
            "energy_mj": self.energy_mj,
            "power_w": self.power_w,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ExitProfile:
        return cls(
            index=_count(doc["index"], "exit index", 0),
            latency_ms=ExitLatency(**_figures(doc["latency_ms"], ExitLatency)),
            energy_mj=_optional_figure(doc.get("energy_mj"), "energy_mj"),
            power_w=_optional_figure(doc.get("power_w"), "power_w"),
        )


@dataclass(frozen=True)
class SegmentProfile:
    index: int
    file: str
    sha256: str
    latency_ms: LatencyStats
    energy_mj: float | None  # measured, per call (one batch); None without a sensor
    power_w: float | None  # measured average over the window (includes the idle baseline)
    # resident memory the segment's session holds once loaded, MB (RSS growth); None where
    # the OS does not say, or in profiles written before it was measured
    resident_mb: float | None = None
    # what its exit head adds to it, ms per call (with the head against its body); None
    # for a segment without a body, or in profiles written before it was measured
    head_ms: float | None = None


@dataclass(frozen=True)
class CostProfile:
    """A bundle's measured cost on one device.

    Energy figures are measured ones only: ``energy_source`` names the sensor, or is
    ``none`` when the device has none; then every ``energy_mj`` is None, and a consumer that
    wants a figure models it from ``power_model_w`` (the target's idle/active watts) and
    labels it modeled. A modeled figure never sits where a measured one is expected.
    """

    target: str
    precision: str
    energy_source: str
    energy_measured: bool
    power_model_w: dict[str, float]  # {"idle": W, "active": W} from the target profile
    measured_idle_power_w: float | None  # the sensor with nothing running; None without one
    batch_size: int
    repeats: int
    warmup: int
    providers: tuple[str, ...]
    onnxruntime: str
    platform: str
    segments: tuple[SegmentProfile, ...]
    # Per-exit costs through the runtime. Empty in profiles written before they existed;
    # readers then fall back to summing segments (which leaves out per-call overhead).
    exits: tuple[ExitProfile, ...] = ()
    # A call with every early exit disabled, as the bundle deploys that (its plain graph,
    # one call, where it has one): the full model's cost, the speed-ups' reference. None in
    # profiles written before it was measured. Its ``index`` is one past the last exit.
    full: ExitProfile | None = None
    # a split bundle's link to its server (profile --link), None where not measured
    link: LinkProfile | None = None

    @property
    def energy_provenance(self) -> EnergySource:
        """Measured by the named sensor, or none (a profile holds no modeled figure)."""
        return EnergySource.measured_by(self.energy_source) if self.energy_measured else NONE

    def exit_latency_ms(self, i: int, stat: str = "median") -> float:
        """Latency of a call leaving at exit i: measured through the runtime when the
        profile has per-exit costs, else segments 0..i summed."""
        if self.exits:
            return getattr(self.exits[i].latency_ms, stat)
        return sum(getattr(s.latency_ms, stat) for s in self.segments[: i + 1])

    def exit_energy_mj(self, i: int) -> float | None:
        """Energy of a call leaving at exit i, or None without energy figures."""
        if self.exits:
            return self.exits[i].energy_mj
        parts = [s.energy_mj for s in self.segments[: i + 1]]
        return None if any(p is None for p in parts) else float(sum(parts))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "target": self.target,
            "precision": self.precision,
            "energy_source": self.energy_source,
            "energy_measured": self.energy_measured,
            "power_model_w": dict(self.power_model_w),
            "measured_idle_power_w": self.measured_idle_power_w,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "providers": list(self.providers),
            "onnxruntime": self.onnxruntime,
            "platform": self.platform,
            "segments": [
                {
                    "index": s.index,
                    "file": s.file,
                    "sha256": s.sha256,
                    "latency_ms": vars(s.latency_ms),
                    "energy_mj": s.energy_mj,
                    "power_w": s.power_w,
                    "resident_mb": s.resident_mb,
                    "head_ms": s.head_ms,
                }
                for s in self.segments
            ],
            "exits": [e.to_json() for e in self.exits],
            "full": None if self.full is None else self.full.to_json(),
            "link": None if self.link is None else self.link.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, source: str = "<profile>") -> CostProfile:
        """Parse and check a profile document: every latency, energy and power figure must
        be a finite number >= 0 (a NaN would meet any budget), counts positive integers."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise TargetError(f"{source}: format is {got!r}; expected {FORMAT!r}")
        try:
            segments = tuple(
                SegmentProfile(
                    index=_count(s["index"], "segment index", 0),
                    file=_text(s["file"], "segment file"),
                    sha256=_text(s["sha256"], "segment sha256"),
                    latency_ms=LatencyStats(**_figures(s["latency_ms"], LatencyStats)),
                    energy_mj=_optional_figure(s.get("energy_mj"), "energy_mj"),
                    power_w=_optional_figure(s.get("power_w"), "power_w"),
                    resident_mb=_optional_figure(s.get("resident_mb"), "resident_mb"),
                    head_ms=_optional_figure(s.get("head_ms"), "head_ms"),
                )
                for s in doc["segments"]
            )
            fields = {
                k: _text(doc[k], k) for k in ("target", "precision", "energy_source", "onnxruntime")
            }
            counts = {
                "batch_size": _count(doc["batch_size"], "batch_size", 1),
                "repeats": _count(doc["repeats"], "repeats", 1),
                "warmup": _count(doc["warmup"], "warmup", 0),
            }
            energy_measured = doc["energy_measured"]
            if not isinstance(energy_measured, bool):
                raise ValueError(f"energy_measured must be true or false, got {energy_measured!r}")
            power = doc.get("power_model_w", {})
            return cls(
                **fields,
                **counts,
                energy_measured=energy_measured,
                power_model_w={str(k): _figure(v, "power_model_w") for k, v in power.items()},
                measured_idle_power_w=_optional_figure(
                    doc.get("measured_idle_power_w"), "measured_idle_power_w"
                ),
                providers=tuple(_text(p, "provider") for p in doc["providers"]),
                platform=str(doc.get("platform", "")),
                segments=segments,
                exits=tuple(ExitProfile.from_json(e) for e in doc.get("exits", ())),
                full=None if doc.get("full") is None else ExitProfile.from_json(doc["full"]),
                link=None if doc.get("link") is None else LinkProfile.from_json(doc["link"]),
            )
        except KeyError as err:
            raise TargetError(f"{source}: missing key {err}; re-run `edgeexit profile`") from err
        except (TypeError, ValueError, AttributeError) as err:
            raise TargetError(f"{source}: malformed profile: {err}") from err

    def save(
        self, path: str | os.PathLike | files.Output, *, inputs: tuple[str | os.PathLike, ...] = ()
    ) -> None:
        """Write the JSON atomically (temp file + rename), as strict JSON. ``path`` must be
        new or an earlier profile, and not one of ``inputs`` (files.check_output); an
        ``Output`` checked before the measurement is written as it was found then."""
        if not isinstance(path, files.Output):
            path = files.check_output(path, "profile", inputs=inputs)
        files.write_json_atomic(path, self.to_json(), what="profile")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CostProfile:
        doc = documents.read_json(path, "device profile", TargetError)
        return cls.from_json(doc, source=str(path))

    def __rich__(self) -> Any:
        return profile_table(self)


def profile_table(profile: CostProfile) -> Table:
    """One row per segment, then the cost of leaving at each exit."""
    if profile.energy_measured:
        energy_note = f"energy measured ({profile.energy_source})"
    else:
        active_w = profile.power_model_w.get("active", 0.0)
        energy_note = f"no energy sensor: energy not measured (power model {active_w:g} W active)"
    table = Table(
        title=f"profile on {profile.target} ({profile.precision}, batch {profile.batch_size})",
        caption=f"{profile.repeats} timed calls per segment after {profile.warmup} warm-up; "
        f"{energy_note}",
    )
    columns = ("segment", "median ms", "p95 ms", "exit at ms", "mJ/call", "exit at mJ", "MB")
    for col in columns:
        table.add_column(col, justify="right")
    for s in profile.segments:
        exit_mj = profile.exit_energy_mj(s.index)
        table.add_row(
            str(s.index),
            f"{s.latency_ms.median:.3f}",
            f"{s.latency_ms.p95:.3f}",
            f"{profile.exit_latency_ms(s.index):.3f}",
            "-" if s.energy_mj is None else f"{s.energy_mj:.4f}",
            "-" if exit_mj is None else f"{exit_mj:.4f}",
            "-" if s.resident_mb is None else f"{s.resident_mb:.1f}",
        )
    if profile.link is not None:
        k = profile.link
        rate = "" if k.effective_mbit_s is None else f", {k.effective_mbit_s:.1f} Mbit/s effective"
        table.caption += (
            f"\nlink to {k.url}: round trip {k.rtt_ms.median:.1f} ms (p95 {k.rtt_ms.p95:.1f}); "
            f"one sample offloaded after exit {k.at} ({k.carry_bytes:,} B {k.encoding}) "
            f"{k.offload_ms.median:.1f} ms (p95 {k.offload_ms.p95:.1f}){rate}"
        )
    return table


def _figure(value: Any, what: str) -> float:
    """A measured figure: a finite number >= 0 (never NaN, inf, negative, bool or text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} is {value!r}; expected a finite number >= 0")
    return float(value)


def _optional_figure(value: Any, what: str) -> float | None:
    return None if value is None else _figure(value, what)


def _figures(doc: Any, cls: type) -> dict[str, float]:
    if not isinstance(doc, dict):
        raise ValueError(f"latency_ms must be an object, got {doc!r}")
    fields = cls.__dataclass_fields__
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    missing = [n for n in required if n not in doc]
    if missing:
        raise ValueError(f"latency_ms has no {missing[0]!r}")
    return {n: _figure(doc[n], f"latency_ms.{n}") for n in fields if n in doc}


def _count(value: Any, what: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value
