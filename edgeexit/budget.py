"""The calibration budget: what the user asks calibrate to meet, as one frozen dataclass.

Budgets arrive as strings with units ('4ms', '0.5 ms', '800us', '2mJ', '1.5J'); this module
parses them into ``latency_ms`` / ``energy_mj`` floats and refuses anything else with a
one-line :class:`CalibrationError` that says what was expected.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from edgeexit.errors import CalibrationError

_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")
_TIME_TO_MS = {"ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}
_ENERGY_TO_MJ = {"mj": 1.0, "j": 1e3, "uj": 1e-3, "µj": 1e-3}
_MEMORY_TO_MB = {
    "mb": 1.0,
    "mib": 1.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "kb": 1 / 1024,
    "kib": 1 / 1024,
}


def drop_from_points(points: float, owner: str) -> float:
    """An accuracy drop given in percentage points by code written before every drop was a
    fraction (``max_quant_drop_pp=1.0``): the fraction, with a DeprecationWarning."""
    warnings.warn(
        f"{owner}(max_quant_drop_pp=...) is deprecated: pass max_quant_drop as a fraction "
        f"({points / 100:g} for {points:g} pp), as every accuracy drop is given",
        DeprecationWarning,
        stacklevel=4,
    )
    return points / 100


def _parse(text: str, units: dict[str, float], what: str, example: str) -> float:
    match = _NUMBER_UNIT.match(str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in units:
        raise CalibrationError(
            f"cannot read {what} {text!r}; expected a number with a unit, e.g. {example}"
        )
    value = float(match.group(1)) * units[unit]
    if not value > 0 or math.isinf(value):
        raise CalibrationError(f"{what} {text!r} must be a positive finite figure")
    return value


def parse_latency_ms(text: str) -> float:
    """'4ms', '0.5 ms', '800us', '1s' -> milliseconds."""
    return _parse(text, _TIME_TO_MS, "latency", "'4ms', '0.5 ms' or '800us'")


def parse_energy_mj(text: str) -> float:
    """'2mJ', '1.5J', '300uJ' -> millijoules."""
    return _parse(text, _ENERGY_TO_MJ, "energy", "'2mJ' or '1.5J'")


def parse_memory_mb(text: str) -> float:
    """'64MB', '1.5GB', '512kB' -> megabytes (MiB: what the OS counts resident memory in)."""
    return _parse(text, _MEMORY_TO_MB, "memory", "'64MB' or '1.5GB'")


# Quality metrics of exits that give tensors (images, vectors): the budget's unit names the
# metric. PSNR against the data's target tensors, in dB; MSE against the targets, or
# against the last exit's output when the data has none.
QUALITY_UNITS = {"db": "psnr", "mse": "mse"}


def parse_quality_drop(text: str) -> tuple[float, str]:
    """'0.5dB' -> (0.5, 'psnr'): the mean PSNR may fall by 0.5 dB; '0.001mse' ->
    (0.001, 'mse'): the mean squared error may rise by 0.001."""
    value = _parse(text, {u: 1.0 for u in QUALITY_UNITS}, "quality drop", "'0.5dB' or '0.001mse'")
    unit = _NUMBER_UNIT.match(str(text)).group(2).lower()
    return value, QUALITY_UNITS[unit]


def _fraction(value: float, what: str) -> float:
    if not 0.0 <= value < 1.0:
        raise CalibrationError(f"{what} is {value}; expected a fraction in [0, 1), e.g. 0.01")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """What calibrate must meet. Unset fields (None) are not constrained.

    - cost caps (``latency_ms`` on the expected mean, ``p95_latency_ms``, ``energy_mj`` per
      sample) with no accuracy floor: maximise accuracy under the caps;
    - ``max_accuracy_drop`` (fraction, 0.01 = 1 pp below the final exit): minimise expected
      latency subject to the floor (and any caps);
    - ``max_quality_drop`` (for exits that give tensors, in the units of
      ``quality_metric``: dB of mean PSNR, or a rise in mean squared error): minimise
      expected latency subject to it (and any caps), checked on a held-out split;
    - ``risk`` with ``confidence``: guarantee mode; with probability >= confidence over the
      calibration draw, the disagreement with the final exit (or the error, when
      ``risk_metric='error'``) is <= risk. Cannot be combined with the other fields.
    """

    latency_ms: float | None = None
    p95_latency_ms: float | None = None
    energy_mj: float | None = None
    max_accuracy_drop: float | None = None
    risk: float | None = None
    confidence: float = 0.9
    risk_metric: str = "disagreement"
    max_quality_drop: float | None = None
    quality_metric: str = "psnr"

    def __post_init__(self) -> None:
        caps = (self.latency_ms, self.p95_latency_ms, self.energy_mj, self.max_accuracy_drop,
                self.max_quality_drop)  # fmt: skip
        if self.risk is None and all(c is None for c in caps):
            raise CalibrationError(
                "no budget given; expected one of `latency_ms`, `p95_latency_ms`, "
                "`energy_mj`, `max_accuracy_drop`, `max_quality_drop` or `risk`"
            )
        if self.max_quality_drop is not None:
            if self.max_accuracy_drop is not None:
                raise CalibrationError(
                    "`max_quality_drop` (exits that give tensors) and `max_accuracy_drop` "
                    "(class logits) cannot both be given"
                )
            if not self.max_quality_drop > 0 or math.isinf(self.max_quality_drop):
                raise CalibrationError(
                    f"`max_quality_drop` is {self.max_quality_drop}; expected a positive figure"
                )
        if self.quality_metric not in QUALITY_UNITS.values():
            raise CalibrationError(
                f"quality metric {self.quality_metric!r}; expected one of "
                f"{', '.join(sorted(set(QUALITY_UNITS.values())))}"
            )
        if self.risk is not None and any(c is not None for c in caps):
            raise CalibrationError("`risk` (guarantee mode) cannot be combined with other budgets")
        if self.max_accuracy_drop is not None:
            _fraction(self.max_accuracy_drop, "`max_accuracy_drop`")
        if self.risk is not None and not 0.0 < self.risk < 1.0:
            raise CalibrationError(f"`risk` is {self.risk}; expected a fraction in (0, 1)")
        if not 0.0 < self.confidence < 1.0:
            raise CalibrationError(
                f"`confidence` is {self.confidence}; expected a probability in (0, 1), e.g. 0.9"
            )
        if self.risk_metric not in ("disagreement", "error"):
            raise CalibrationError(
                f"risk metric {self.risk_metric!r}; expected 'disagreement' or 'error'"
            )

    @classmethod
    def from_strings(
        cls,
        *,
        latency: str | None = None,
        p95_latency: str | None = None,
        energy: str | None = None,
        max_accuracy_drop: float | None = None,
        risk: float | None = None,
        confidence: float = 0.9,
        risk_metric: str = "disagreement",
    ) -> Budget:
        """Build from the CLI's strings ('4ms', '2mJ'), parsing their units."""
        return cls(
            latency_ms=None if latency is None else parse_latency_ms(latency),
            p95_latency_ms=None if p95_latency is None else parse_latency_ms(p95_latency),
            energy_mj=None if energy is None else parse_energy_mj(energy),
            max_accuracy_drop=max_accuracy_drop,
            risk=risk,
            confidence=confidence,
            risk_metric=risk_metric,
        )

    @property
    def guarantee(self) -> bool:
        return self.risk is not None

    def describe(self) -> str:
        """One line for tables and errors, e.g. 'mean latency <= 4 ms'."""
        parts = []
        if self.latency_ms is not None:
            parts.append(f"mean latency <= {self.latency_ms:g} ms")
        if self.p95_latency_ms is not None:
            parts.append(f"p95 latency <= {self.p95_latency_ms:g} ms")
        if self.energy_mj is not None:
            parts.append(f"energy <= {self.energy_mj:g} mJ/sample")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop * 100:g} pp")
        if self.max_quality_drop is not None:
            if self.quality_metric == "psnr":
                parts.append(f"PSNR drop <= {self.max_quality_drop:g} dB")
            else:
                parts.append(f"MSE rise <= {self.max_quality_drop:g}")
        if self.risk is not None:
            parts.append(f"{self.risk_metric} <= {self.risk:g} with confidence {self.confidence:g}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        if self.max_quality_drop is None:
            del doc["quality_metric"]  # says nothing without a quality budget
        return doc
