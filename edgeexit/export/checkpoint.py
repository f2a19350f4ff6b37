"""Checkpoints that load without running pickled code.

``save`` writes a dict that ``torch.load(weights_only=True)`` accepts: the state_dict, the
import path and keyword arguments of the factory that builds the model, the model inputs'
spec and a few example rows. ``load`` rebuilds the model by importing that factory (code the
user has installed, not code stored in the file). A plain pickled ``nn.Module`` (``torch.save
(model)``) is loaded only with ``trust_pickle=True``, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeexit.errors import CheckpointError

FORMAT = "edgeexit.checkpoint/1"
FACTORY_ATTR = "_edgeexit_factory"
EXAMPLE_ROWS = 4  # example inputs kept in the file, for validation at export


@dataclass(frozen=True)
class Checkpoint:
    """A loaded model, its example inputs (None for a trusted pickle) and input names."""

    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...] | None
    input_names: tuple[str, ...] | None


def checkpointable(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorate a model factory so the models it builds remember how to be rebuilt.

    The factory must be importable (module level) and take JSON-like keyword arguments.
    """

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> nn.Module:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        model = fn(*args, **kwargs)
        setattr(model, FACTORY_ATTR, (f"{fn.__module__}:{fn.__qualname__}", dict(bound.arguments)))
        return model

    return build


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_inputs: object,
    input_names: Sequence[str] | None = None,
    factory: str | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` as an edgeexit checkpoint.

    ``factory`` ("package.module:function") and ``factory_kwargs`` say how to rebuild the
    model; models built by a ``@checkpointable`` factory record them already.
    """
    from edgeexit.export.inputs import resolve_input_names, to_tensors
    from edgeexit.export.model import check_contract

    check_contract(model)
    if factory is None:
        factory, recorded = getattr(model, FACTORY_ATTR, (None, {}))
        factory_kwargs = recorded if factory_kwargs is None else factory_kwargs
    if factory is None:
        raise CheckpointError(
            f"cannot tell how to rebuild a {type(model).__name__}; pass "
            "factory='package.module:function' (and factory_kwargs) or build it with a "
            "@checkpointable factory"
        )
    _import_factory(factory)  # fail now, not at export time
    inputs = to_tensors(example_inputs)
    names = resolve_input_names(inputs, input_names)
    doc = {
        "format": FORMAT,
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs or {}),
        "state_dict": model.state_dict(),
        "input_names": list(names),
        "example_inputs": [x[:EXAMPLE_ROWS].clone() for x in inputs],
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(doc, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike, *, trust_pickle: bool = False) -> Checkpoint:
    """Load a checkpoint written by ``save`` (or, if trusted, a pickled ``nn.Module``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        # torch names the class it refused; anything else means the bytes are not a pickle.
        if trust_pickle or "Unsupported global" not in str(err):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_line(err)}") from err
        raise CheckpointError(
            f"{path} holds pickled code (a whole module saved with torch.save), which edgeexit "
            "will not run by default; re-save it with edgeexit.save(model, path, "
            "example_inputs=...) or pass --trust-pickle (trust_pickle=True) if you trust it"
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_line(err)}") from err
    if isinstance(doc, nn.Module):
        return Checkpoint(doc, None, None)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an edgeexit checkpoint (no {FORMAT!r} format "
            "key); write it with edgeexit.save(model, path, example_inputs=...)"
        )
    return _rebuild(doc, path)


def _rebuild(doc: dict, path: Path) -> Checkpoint:
    fn = _import_factory(doc["factory"])
    try:
        model = fn(**doc["factory_kwargs"])
        model.load_state_dict(doc["state_dict"], strict=True)
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: factory {doc['factory']} could not rebuild the model: {_line(err)}"
        ) from err
    model.eval()
    return Checkpoint(model, tuple(doc["example_inputs"]), tuple(doc["input_names"]))


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"factory {spec!r} is not importable ({_line(err)}); expected "
            "'package.module:function' on the Python path"
        ) from err
    if not callable(obj):
        raise CheckpointError(f"factory {spec!r} is not callable")
    return obj


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
