"""The typer application and the one place where errors become one-line messages.

Commands are thin: parse, call the library, render. Each lives in its own module in this
package and registers itself with ``@command``. Exit codes: 0 ok, 1 failure (one
``error:`` line on stderr), 2 usage error (a malformed option or argument: one ``error:``
line too), 130 interrupted (Ctrl-C). No traceback reaches the user for any of them.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from edgeexit.cli.progress import interrupted_line
from edgeexit.errors import EdgeExitError, first_line
from edgeexit.files import os_reason

# typer re-exports click's exception classes under its own names in every version it
# allows (newer ones vendor click), so they are found through them.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
# Modules only the host install has, and the extra that brings each.
HOST_EXTRAS = {"torch": "export", "onnx": "export", "onnxsim": "export", "matplotlib": "plot",
               "sklearn": "dev", "transformers": "hf"}  # fmt: skip


def _flags_without_types() -> None:
    """typer >= 0.20 writes a type after every option in --help, flags too ('--json
    <bool>'); a flag takes no value, so it is shown bare, as click and older typer do."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_edgeexit", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._edgeexit = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_without_types()


class _OneLineErrors(TyperGroup):
    """The command group, with usage errors printed as one ``error:`` line (exit 2) instead
    of a framed usage box, and Ctrl-C as exit 130, for CLI runs and CliRunner alike."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except _USAGE_ERROR as err:
            code = _usage_error(err)
        except _CLICK_EXCEPTION as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            code = err.exit_code
        except (typer.Abort, KeyboardInterrupt) as err:  # older typer: Abort, from Ctrl-C
            typer.echo(interrupted_line(err.__cause__ or err), err=True)
            code = EXIT_INTERRUPTED
        if standalone_mode:
            sys.exit(code)
        return code

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        # typer turns a Ctrl-C into a silent exit 130: while options are parsed, and
        # in a command (``command``), it gets its line here first
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as err:
            raise _interrupted(err) from None


def _interrupted(err: KeyboardInterrupt) -> typer.Exit:
    """Print the one line of a Ctrl-C (what the command kept, if it said); return the Exit
    to raise (code 130)."""
    typer.echo(interrupted_line(err), err=True)
    return typer.Exit(EXIT_INTERRUPTED)


def _usage_error(err: Exception) -> int:
    message = err.format_message()
    if type(err).__name__ == "NoArgsIsHelpError":  # `edgeexit` alone: the help is the answer
        typer.echo(message, err=True)
        return err.exit_code
    ctx = getattr(err, "ctx", None)
    reason = _coercion_reason(err)
    if reason is not None:  # a BadParameter: its hint ('--threads') is kept, its words ours
        err.message = reason
        message = err.format_message()
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    text = in_flags(" ".join(message.split()))  # click wraps long messages: one line
    typer.echo(f"error: {text}{hint}", err=True)
    return EXIT_USAGE


# What each of pydantic's coercion errors expected, and its bounds' words.
_EXPECTED = {"int_parsing": "an integer", "int_from_float": "an integer",
             "int_type": "an integer", "float_parsing": "a number", "float_type": "a number",
             "finite_number": "a finite number", "bool_parsing": "true or false"}  # fmt: skip
_BOUNDS = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}


def _coercion_reason(err: Exception) -> str | None:
    """The reason, in the command line's words, for an option value newer typer coerced with
    pydantic and refused: it says 'Input should be a valid integer, unable to parse string
    as an integer' or 'Value error, ...'. None for any other error (older typer's own
    messages, and edgeexit's parsers, already say what was given and what was expected)."""
    errors = getattr(err.__cause__, "errors", None)
    found = errors() if callable(errors) else []
    if not found or not isinstance(found[0], dict):
        return None
    kind, value, ctx = found[0].get("type"), found[0].get("input"), found[0].get("ctx") or {}
    if kind in _EXPECTED:
        return f"{value!r} is not {_EXPECTED[kind]}"
    bound = next((k for k in _BOUNDS if k in ctx), None)
    if bound is not None:
        return f"{value} is out of range; expected {_BOUNDS[bound]} {ctx[bound]}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"]).rstrip(".")
    return None


app = typer.Typer(
    name="edgeexit",
    cls=_OneLineErrors,
    help="Deploy multi-exit (early-exit) networks to edge devices as chained ONNX segments.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


def version_line() -> str:
    """'edgeexit 0.1.0 (onnxruntime 1.32.0, numpy 2.4.6, python 3.11.2)'."""
    import importlib.metadata as md
    import platform

    import edgeexit

    def installed(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    return (
        f"edgeexit {edgeexit.__version__} (onnxruntime {installed('onnxruntime')}, numpy "
        f"{installed('numpy')}, python {platform.python_version()})"
    )


@app.callback()
def _global_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Only results and errors: no notes (e.g. how energy is found)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Notes in full: e.g. why each energy sensor was not read."
    ),
) -> None:
    """Deploy multi-exit (early-exit) networks to edge devices as chained ONNX segments.

    Pipeline: `export` a model.pt to a bundle, `profile` it on the device, `calibrate` its
    exit thresholds to a budget, then `run` or `bench` it on the device; `inspect` shows
    what a bundle holds.
    """
    if quiet and verbose:
        raise usage_error("-q/--quiet and -v/--verbose ask for opposite things; give one")
    # edgeexit's notes (which energy meter, trust warnings) go through the 'edgeexit'
    # logger, and from there to stderr, one line each (_Notes).
    logger = logging.getLogger("edgeexit")
    logger.setLevel(logging.ERROR if quiet else logging.NOTSET)
    _NOTES.verbose = verbose
    if _NOTES not in logger.handlers:
        logger.addHandler(_NOTES)


class _Notes(logging.Handler):
    """edgeexit's notes on stderr, one line each. A note with details (the energy notice:
    why each sensor was not read) shows them under -v, and otherwise says where they are."""

    verbose = False

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if details := getattr(record, "details", ""):
            text += f" ({details})" if self.verbose else " (edgeexit -v for details)"
        sys.stderr.write(f"{in_flags(text)}\n")  # the stderr of now: a test runner swaps it


_NOTES = _Notes()


# The library names a parameter in backquotes as Python spells it (edgeexit.errors); the
# command line shows the flag that sets it. One table for every command.
FLAGS = {
    "latency_ms": "--target-latency",
    "p95_latency_ms": "--target-p95-latency",
    "energy_mj": "--target-energy",
    "max_accuracy_drop": "--max-accuracy-drop",
    "max_quality_drop": "--max-quality-drop",
    "output": "--exit-output",
    "risk": "--risk",
    "risk_metric": "--risk-metric",
    "confidence": "--confidence",
    "profile": "--profile",
    "plot": "--plot",
    "batch_size": "--batch-size",
    "rounds": "--rounds",
    "data": "--data",
    "test_data": "--test-data",
    "calib_data": "--calib-data",
    "max_quant_drop": "--max-quant-drop",
    "max_new_tokens": "--max-new-tokens",
    "min_agreement": "--min-agreement",
    "draft_stop": "--draft-stop",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
    "stop": "--stop",
    "max_exit": "--max-exit",
    "max_prefix": "--max-prefix",
    "max_memory_mb": "--target-memory",
    "max_latency_ms": "--target-max-latency",
    "opset": "--opset",
    "input_shape": "--input-shape",
    "trust_pickle": "--trust-pickle",
    "factory": "--factory",
    "model": "--model",
    "epochs": "--epochs",
    "exit_after": "--exits",
    "max_positions": "--max-positions",
    "attention": "--attention",
    "block_size": "--block-size",
    "lr": "--lr",
    "profile_repeats": "--profile-repeats",
    "max_drop": "--max-drop",
    "replicas": "--replicas",
    "max_replicas": "--max-replicas",
}
_PARAMETER = re.compile(r"`(\w+)`")


def in_flags(message: str) -> str:
    """A library message as the command line says it: `max_accuracy_drop` becomes
    --max-accuracy-drop; a name without a flag keeps its backquotes."""
    return _PARAMETER.sub(lambda m: FLAGS.get(m[1], m[0]), message)


def show(renderable: Any) -> None:
    """Print a report the library rendered, its parameter names as flags."""
    console = Console()
    with console.capture() as captured:
        console.print(renderable)
    sys.stdout.write(in_flags(captured.get()))


def fail(message: str) -> typer.Exit:
    """Print one line to stderr; return the Exit to raise (code 1)."""
    typer.echo(f"error: {in_flags(message)}", err=True)
    return typer.Exit(1)


def usage_error(message: str) -> typer.Exit:
    """Print one usage-error line to stderr; return the Exit to raise (code 2), for option
    combinations no single option's parser can check."""
    typer.echo(f"error: {in_flags(message)}", err=True)
    return typer.Exit(EXIT_USAGE)


def command(*args: Any, **kwargs: Any) -> Callable:
    """``app.command`` that turns any EdgeExitError, any OS error the library did not
    translate (a full disk, a read-only folder), and running out of memory (a batch too
    large for this machine) into one line and exit code 1, and a Ctrl-C into one line
    (what the command kept: ``progress.Interrupted``) and exit code 130."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except EdgeExitError as err:
                raise fail(first_line(err)) from None
            except ModuleNotFoundError as err:
                extra = HOST_EXTRAS.get((err.name or "").split(".")[0])
                if extra is None:
                    raise
                raise fail(
                    f"edgeexit {fn.__name__.removesuffix('_cmd')} needs {err.name}, which this "
                    f"install lacks (a device install has the runtime only): on the host, "
                    f"pip install 'edgeexit[{extra}]' (torch: the CPU wheel first)"
                ) from None
            except OSError as err:
                where = f": {err.filename}" if err.filename else ""
                raise fail(f"{os_reason(err)}{where}") from None
            except MemoryError as err:  # sizes within every bound, beyond this machine
                raise fail(f"not enough memory: {first_line(err) or 'MemoryError'}") from None
            except KeyboardInterrupt as err:
                raise _interrupted(err) from None

        return app.command(*args, **kwargs)(wrapper)

    return register
