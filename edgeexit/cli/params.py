"""Option values checked as they are parsed: a malformed one is a usage error (exit 2).

Each parser takes the option's text and returns its value, or raises ``typer.BadParameter``
with what was expected; the application prints that as one line (``app.py``). They use only
typer's public API, which works across the typer versions the package allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import typer

from edgeexit.budget import parse_energy_mj, parse_latency_ms, parse_memory_mb
from edgeexit.criteria import NAMES as CRITERIA
from edgeexit.errors import CalibrationError
from edgeexit.targets import available_targets

# The exit criteria as a choice: typer lists them when a value is not one of them.
Criterion = Enum("Criterion", {name: name for name in CRITERIA}, type=str)
RiskMetric = Enum("RiskMetric", {name: name for name in ("disagreement", "error")}, type=str)
ExitOutput = Enum("ExitOutput", {name: name for name in ("logits", "tensor")}, type=str)


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


def memory_mb(text: str) -> float:
    """'64MB', '1.5GB' -> megabytes."""
    try:
        return parse_memory_mb(text)
    except CalibrationError as err:
        raise typer.BadParameter(str(err)) from err


def energy_mj(text: str) -> float:
    """'2mJ', '1.5J' -> millijoules."""
    try:
        return parse_energy_mj(text)
    except CalibrationError as err:
        raise typer.BadParameter(str(err)) from err


# How an accuracy drop may be written, for help texts and errors alike.
DROP_FORMS = "a fraction in [0, 1) such as 0.01, or points such as 1pp or 1%"


def accuracy_drop(text: str) -> float:
    """An accuracy drop, as a fraction: '0.01', '1pp' or '1%' (percentage points), the
    same unit for every command that takes one. A bare number must be a fraction below 1,
    so an old '--max-quant-drop 1' (points) is refused rather than read as 100 %."""
    stripped = str(text).strip()
    unit = next((u for u in ("pp", "%") if stripped.lower().endswith(u)), None)
    try:
        value = _number(stripped[: -len(unit)].strip() if unit else stripped)
    except typer.BadParameter as err:  # not a number, or not a finite one
        raise typer.BadParameter(f"{err.message}; expected {DROP_FORMS}") from None
    value = value / 100 if unit else value
    if not 0 <= value < 1:
        raise typer.BadParameter(f"{text} is not an accuracy drop: expected {DROP_FORMS}")
    return value


def probability(text: str) -> float:
    """A probability in (0, 1): a risk or a confidence."""
    value = _number(text)
    if not 0 < value < 1:
        raise typer.BadParameter(f"{text} is not a probability in (0, 1), e.g. 0.9")
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


def factory(text: str) -> str:
    """A factory's import path, MODULE:FUNCTION (its names are checked when it is used)."""
    module, colon, name = text.partition(":")
    if not (module.strip() and colon and name.strip()) or ":" in name:
        raise typer.BadParameter(f"{text!r} is not MODULE:FUNCTION, e.g. mypkg.models:build")
    return text


def choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A choice option: typer lists the values when one is not among them."""
    return Enum(name, {v: v for v in values}, type=str)


def share(text: str) -> float:
    """A confidence level in [0, 1] (0: never stops)."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise typer.BadParameter(f"{text} is not in [0, 1]")
    return value


def temperature(text: str) -> float:
    """A sampling temperature: a finite number >= 0 (0: greedy)."""
    return _number_in(text, lambda v: v >= 0, "a number >= 0, e.g. 0.8 (0: greedy)")


def top_p(text: str) -> float:
    """A share of probability in (0, 1] (1: every token)."""
    return _number_in(text, lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.9 (1: every token)")


def _number_in(text: str, within: Callable[[float], bool], expected: str) -> float:
    try:
        value = _number(text)
    except typer.BadParameter as err:
        raise typer.BadParameter(f"{err.message}; expected {expected}") from None
    if not within(value):
        raise typer.BadParameter(f"{text} is out of range; expected {expected}")
    return value


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def escaped(text: str, flag: str) -> str:
    """Text with \\n, \\t, \\r and \\\\ for a newline, a tab, a carriage return and a
    backslash: what a stop sequence needs and a shell makes awkward to type."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "\\":
            out.append(text[i])
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code not in ESCAPES:
            raise typer.BadParameter(
                f"'{text}' holds the escape {text[i : i + 2]}; expected \\n, \\t, \\r or "
                "\\\\ (a backslash)",
                param_hint=f"'{flag}'",
            )
        out.append(ESCAPES[code])
        i += 2
    return "".join(out)


def number_list(text: str, flag: str) -> list[float]:
    """'0.9,0.8,inf' -> numbers, for options that take one per exit. ``inf`` or ``never``:
    no one leaves there (a bundle writes it as null); NaN and -inf mean nothing."""
    try:
        values = [math.inf if part.strip() == "never" else float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of numbers", param_hint=f"'{flag}'"
        ) from None
    if any(v != v or v == -math.inf for v in values):
        raise typer.BadParameter(
            f"{text!r} holds NaN or -inf; expected numbers, or inf (never)", param_hint=f"'{flag}'"
        )
    return values


def layers(text: str) -> list[int]:
    """'4,8' -> layer numbers, 1-based (the model checks them against its depth)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise typer.BadParameter(f"{text!r} is not a list of layer numbers, e.g. 4,8 (from 1)")
    return [int(part) for part in parts]


def agreement(text: str) -> float:
    """A share that must be reached, in (0, 1]: 0 would be no requirement at all."""
    value = _number(text)
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{text} is not a fraction in (0, 1], e.g. 0.9")
    return value


def max_quant_drop_option():
    """``--max-quant-drop``, as export and compile both take it: what an exit may lose to
    the target's precision."""
    return typer.Option(
        "0.01",
        "--max-quant-drop",
        parser=accuracy_drop,
        metavar="DROP",
        help=f"Most accuracy an exit may lose to the target's precision: {DROP_FORMS}.",
    )


def server_option():
    """``--server``, as run and bench take it: a split bundle's server."""
    return typer.Option(
        None,
        "--server",
        metavar="URL",
        help="A split bundle's server (edgeexit serve): samples not confident by the split "
        "exit finish there; without an answer in --timeout, on the device (marked degraded).",
    )


def timeout_option():
    return typer.Option(
        1.0, "--timeout", min=0.001, help="Seconds a call waits for --server, retries included."
    )
