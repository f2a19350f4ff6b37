"""Option values checked as they are parsed: a malformed one is a usage error (exit 2).

Each parser takes the option's text and returns its value, or raises ``typer.BadParameter``
with what was expected; the application prints that as one line (``app.py``). They use only
typer's public API, which works across the typer versions the package allows.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path

import typer

from edgeexit.bundle import CRITERIA
from edgeexit.calibrate.budget import parse_energy_mj, parse_latency_ms
from edgeexit.errors import CalibrationError
from edgeexit.targets import available_targets

# The exit criteria as a choice: typer lists them when a value is not one of them.
Criterion = Enum("Criterion", {name: name for name in CRITERIA}, type=str)
RiskMetric = Enum("RiskMetric", {name: name for name in ("disagreement", "error")}, type=str)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise typer.BadParameter(f"{text!r} is not a number") from err
    if not math.isfinite(value):
        raise typer.BadParameter(f"{text!r} is not a finite number")
    return value


def latency_ms(text: str) -> float:
    """'4ms', '800us', '0.5 s' -> milliseconds."""
    try:
        return parse_latency_ms(text)
    except CalibrationError as err:
        raise typer.BadParameter(str(err)) from err


def energy_mj(text: str) -> float:
    """'2mJ', '1.5J' -> millijoules."""
    try:
        return parse_energy_mj(text)
    except CalibrationError as err:
        raise typer.BadParameter(str(err)) from err


def fraction(text: str) -> float:
    """A fraction in [0, 1): an accuracy drop (0.01 = 1 point)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise typer.BadParameter(f"{text} is not a fraction in [0, 1), e.g. 0.01 for 1 point")
    return value


def probability(text: str) -> float:
    """A probability in (0, 1): a risk or a confidence."""
    value = _number(text)
    if not 0 < value < 1:
        raise typer.BadParameter(f"{text} is not a probability in (0, 1), e.g. 0.9")
    return value


def points(text: str) -> float:
    """Percentage points in [0, 100]."""
    value = _number(text)
    if not 0 <= value <= 100:
        raise typer.BadParameter(f"{text} is not a number of percentage points in [0, 100]")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise typer.BadParameter(f"{text} is not a positive number")
    return value


def target(text: str) -> str:
    """A shipped target's name or the path of a .toml profile (checked when loaded)."""
    if text.endswith(".toml") or text in available_targets():
        return text
    raise typer.BadParameter(
        f"{text!r} is not a target; expected one of {', '.join(available_targets())} "
        "or the path of a .toml profile"
    )


def output_path(text: str | Path) -> Path:
    if not str(text).strip():
        raise typer.BadParameter("an empty path; expected a file or folder name")
    return Path(text)
