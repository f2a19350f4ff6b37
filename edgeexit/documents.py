"""Reading the JSON and TOML documents edgeexit trusts: a bundle's manifest, a cost profile,
a target spec. One place turns every way a read can fail (missing, a folder, unreadable,
not UTF-8, not JSON, NaN where a number goes) into one line naming the file and the
problem, raised as the caller's error type. Stdlib only: the device reads all three.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeexit.errors import EdgeExitError, first_line
from edgeexit.files import os_reason

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_json(
    path: str | os.PathLike,
    what: str,
    error: type[EdgeExitError],
    *,
    max_bytes: int | None = None,
    missing: str = "does not exist",
) -> Any:
    """The document at ``path``, strict: NaN, Infinity and -Infinity are refused (a NaN
    figure would meet any budget). ``what`` names the file in messages ("device profile");
    ``missing`` says what its absence means."""
    return _parse(path, what, error, max_bytes, missing, _strict_json, "readable JSON")


def read_toml(path: str | os.PathLike, what: str, error: type[EdgeExitError]) -> Any:
    return _parse(path, what, error, None, "does not exist", tomllib.loads, "valid TOML")


def _strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number; expected a finite number or null")


def _parse(
    path: str | os.PathLike,
    what: str,
    error: type[EdgeExitError],
    max_bytes: int | None,
    missing: str,
    parse: Callable[[str], Any],
    form: str,
) -> Any:
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{what} {path} is a directory; expected a file")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise error(f"{what} {path} is over {max_bytes >> 20} MiB; not a {what}")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise error(f"{what} {path} {missing}") from err
    except OSError as err:
        raise error(f"{what} {path} is unreadable: {os_reason(err)}") from err
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text") from err
    try:
        return parse(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:  # JSONDecodeError is a ValueError
        raise error(f"{what} {path} is not {form}: {first_line(err)}") from err
    except RecursionError as err:  # '[[[[...' a few thousand deep: no document of ours
        raise error(f"{what} {path} is not {form}: nested too deeply") from err
