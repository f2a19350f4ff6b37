"""Checkpoints that load without running pickled code.

``save`` writes a dict that ``torch.load(weights_only=True)`` accepts, in one of two kinds:

- *factory*: the state_dict, the import path and keyword arguments of the factory that
  builds the model. ``load`` imports that factory (code the user has installed, not code
  stored in the file) and calls it only if it is an ``nn.Module`` class or a
  ``@checkpointable`` factory: a file naming ``os:system`` or ``subprocess:run`` is refused
  before anything is called. Used when a factory is given or recorded and importable from
  another process (not ``__main__``).
- *programs*: every segment and exit captured with ``torch.export`` and stored as data
  (``edgeexit.export.programs``): any model that exports can be saved this way, with no
  factory and no PYTHONPATH; the graphs may call tensor operators only.

Both keep the model inputs' spec and a few example rows. A plain pickled ``nn.Module``
(``torch.save(model)``) is loaded only with ``trust_pickle=True``, because unpickling runs
arbitrary code; so is a factory of any other kind.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeexit import files
from edgeexit.errors import CheckpointError, first_line
from edgeexit.export.inputs import resolve_input_names, to_tensors
from edgeexit.export.model import check_contract
from edgeexit.export.programs import capture, check_parts, rebuild

FORMAT = "edgeexit.checkpoint/1"
FACTORY_ATTR = "_edgeexit_factory"
CHECKPOINTABLE_ATTR = "_edgeexit_checkpointable"  # marks a factory load() may call
log = logging.getLogger("edgeexit")
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

    setattr(build, CHECKPOINTABLE_ATTR, True)
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
    model; models built by a ``@checkpointable`` factory record them already. Without an
    importable factory (none given, or one defined in ``__main__``), every segment and exit
    is captured with ``torch.export`` instead (module docstring): the file then needs no
    code of yours to load, but holds the model in eval mode for inference and export only.
    """
    check_contract(model)
    given = factory is not None
    if factory is None:
        factory, recorded = getattr(model, FACTORY_ATTR, (None, {}))
        factory_kwargs = recorded if factory_kwargs is None else factory_kwargs
    if given:
        _import_factory(factory, trusted=False)  # asked for: fail now, not at export time
    elif factory is not None and not _importable_elsewhere(factory):
        factory = None  # defined in a script: another process could not import it
    out = files.check_output(path, "checkpoint", recognise=is_checkpoint)
    inputs = to_tensors(example_inputs)
    names = resolve_input_names(inputs, input_names)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "input_names": list(names),
        "example_inputs": [x[:EXAMPLE_ROWS].clone() for x in inputs],
    }
    if factory is not None:
        doc.update(factory=factory, factory_kwargs=dict(factory_kwargs or {}),
                   state_dict=model.state_dict())  # fmt: skip
    else:
        doc["programs"] = capture(model, inputs)
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    files.write_bytes_atomic(out, buffer.getvalue(), what="checkpoint")
    return out.path


def is_checkpoint(path: Path) -> bool:
    """True for a file ``save`` wrote (read without running code)."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # (anything torch cannot read as weights is not ours)
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def load(path: str | os.PathLike, *, trust_pickle: bool = False) -> Checkpoint:
    """Load a checkpoint written by ``save`` (or, if trusted, a pickled ``nn.Module``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"model file {path} {what}; expected a checkpoint file")
    if trust_pickle:
        log.warning(
            "warning: loading %s with trust_pickle (--trust-pickle): unpickling runs any "
            "code stored in the file; do this only for files you made or trust",
            path,
        )
    try:
        doc = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        # torch's weights-only unpickler names what it refused (the wording varies between
        # torch versions); anything else means the bytes are not a pickle.
        # ("Unsupported global: GLOBAL torch.nn...Linear", "unsupported GLOBAL posix.system")
        if trust_pickle or "unsupported global" not in str(err).lower():
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: {first_line(err)}") from err
        raise CheckpointError(
            f"{path} holds pickled code (e.g. a whole module saved with torch.save), which "
            "edgeexit will not run by default; re-save it with edgeexit.save(model, path, "
            "example_inputs=...), or pass `trust_pickle` if you trust it"
        ) from err
    except Exception as err:  # (torch raises RuntimeError, OSError, EOFError, zip errors...)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {first_line(err)}") from err
    if isinstance(doc, nn.Module):
        return Checkpoint(doc, None, None)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an edgeexit checkpoint (no {FORMAT!r} format "
            "key); write it with edgeexit.save(model, path, example_inputs=...)"
        )
    return _rebuild(_checked_doc(doc, path), path, trusted=trust_pickle)


def _checked_doc(doc: dict, path: Path) -> dict:
    """The checkpoint's fields, type-checked: a crafted file gets one line, not a traceback."""
    problems = []
    kwargs = doc.get("factory_kwargs", {})
    if "programs" in doc:
        if "factory" in doc:
            problems.append("it holds both 'programs' and a 'factory'")
        if (problem := check_parts(doc["programs"])) is not None:
            problems.append(problem)
    else:
        if not isinstance(doc.get("factory"), str) or ":" not in doc.get("factory", ""):
            problems.append("'factory' must be a string 'package.module:function'")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            problems.append("'factory_kwargs' must be a dict with string keys")
        state = doc.get("state_dict")
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            problems.append("'state_dict' must map names to tensors")
    names = doc.get("input_names")
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        problems.append("'input_names' must be a list of strings")
    examples = doc.get("example_inputs")
    tensors = isinstance(examples, list | tuple) and examples
    if not tensors or not all(isinstance(x, torch.Tensor) for x in examples):
        problems.append("'example_inputs' must be a non-empty list of tensors")
    if problems:
        raise CheckpointError(f"{path} is a damaged edgeexit checkpoint: {problems[0]}")
    return {**doc, "factory_kwargs": dict(kwargs) if isinstance(kwargs, dict) else {}}


def _rebuild(doc: dict, path: Path, *, trusted: bool) -> Checkpoint:
    if "programs" in doc:
        model = rebuild(doc["programs"], path)
        return Checkpoint(model, tuple(doc["example_inputs"]), tuple(doc["input_names"]))
    fn = _import_factory(doc["factory"], trusted=trusted, source=path)
    try:
        model = fn(**doc["factory_kwargs"])
        if not isinstance(model, nn.Module):
            raise TypeError(f"it returned a {type(model).__name__}, not an nn.Module")
        model.load_state_dict(doc["state_dict"], strict=True)
    except (TypeError, RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path}: factory {doc['factory']} could not rebuild the model: {first_line(err)}"
        ) from err
    model.eval()
    return Checkpoint(model, tuple(doc["example_inputs"]), tuple(doc["input_names"]))


def _importable_elsewhere(spec: str) -> bool:
    """Whether another process could import the factory ``spec`` names: not one defined in
    a script (``__main__``), and importable here."""
    module = spec.partition(":")[0]
    if module == "__main__":
        return False
    try:
        _import_factory(spec, trusted=False)
    except CheckpointError:
        return False
    return True


def _import_factory(
    spec: str, *, trusted: bool, source: Path | None = None
) -> Callable[..., nn.Module]:
    """The object ``spec`` names, if it may be called to build a model.

    Only an ``nn.Module`` subclass or a ``@checkpointable`` factory is callable without
    trust: anything else (``os:system``, ``subprocess:run``, ``builtins:exec``) would run
    what the file says. The check comes before any call.
    """
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"factory {spec!r} is not importable ({first_line(err)}); expected "
            "'package.module:function' on the Python path"
        ) from err
    is_model_class = inspect.isclass(obj) and issubclass(obj, nn.Module)
    if is_model_class or getattr(obj, CHECKPOINTABLE_ATTR, False) is True:
        return obj
    where = f"{source} names factory" if source else "factory"
    if not trusted or not callable(obj):
        raise CheckpointError(
            f"{where} {spec!r}, which is neither an nn.Module class nor a @checkpointable "
            "factory: edgeexit will not call it. Decorate your factory with "
            "@edgeexit.checkpointable, or pass `trust_pickle` if you trust this file"
        )
    return obj
