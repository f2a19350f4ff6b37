"""Prompts from files a user hands over (untrusted): a .json list of prompts (text, or
lists of token ids), as ``calibrate-generation --prompts`` and ``generate --prompts`` take
them, and one prompt's token ids in a .npy array or a text file of integers
(``generate --prompt-ids``). Each is checked for what it is before it becomes an array; the
Generator checks the ids against the vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeexit.errors import DataError, InputError, first_line
from edgeexit.generation import text
from edgeexit.generation.options import is_count


def read_prompts(path: Path, byte_level: bool) -> list[np.ndarray]:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"prompts file {path} {what}; expected a .json list of prompts")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"prompts file {path} is not readable JSON: {err}") from err
    if not isinstance(doc, list) or not doc:
        raise DataError(f"prompts file {path} must hold a non-empty list of prompts")
    return [_prompt(prompt, f"prompt {i} in {path}", byte_level) for i, prompt in enumerate(doc)]


def _prompt(prompt: object, where: str, byte_level: bool) -> np.ndarray:
    """Text (byte-level bundles) or a list of token ids (whole numbers within int64: the
    generator checks them against the vocabulary)."""
    if isinstance(prompt, str):
        if not byte_level:
            raise DataError(f"{where} is text, but the bundle has no byte tokenizer")
        try:
            return text.encode(prompt)
        except InputError as err:
            raise DataError(f"{where}: {err}") from err
    if isinstance(prompt, list) and all(is_count(t) and -(2**63) <= t < 2**63 for t in prompt):
        return np.array(prompt, dtype=np.int64)
    raise DataError(f"{where} is neither text nor a list of token ids (integers)")


def read_ids(path: Path) -> np.ndarray:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"prompt ids {path} {what}; expected a .npy or a text file of integers")
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        else:
            ids = np.array(path.read_text().split(), dtype=np.int64)
    except OverflowError as err:
        raise DataError(f"prompt ids {path} hold a number past int64; expected token ids") from err
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"prompt ids {path} are not integers: {first_line(err)}") from err
    if not isinstance(ids, np.ndarray):  # a .npz archive under a .npy name
        raise DataError(f"prompt ids {path} are an archive of arrays; expected one .npy array")
    if ids.dtype.kind not in "iu":
        raise DataError(f"prompt ids {path} hold {ids.dtype}; expected integers")
    if ids.ndim != 1:
        raise DataError(
            f"prompt ids {path} are an array of shape {list(ids.shape)}; expected one prompt, "
            "a 1-D array of token ids (one prompt per file)"
        )
    return ids
