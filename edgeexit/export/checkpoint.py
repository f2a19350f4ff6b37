"""Checkpoints that load without running code from the file, or importing what it names.

``save`` writes a dict that ``torch.load(weights_only=True)`` accepts, in one of two kinds:

- *factory*: the state_dict, the import path and keyword arguments of the factory that
  builds the model. Used when a factory is given or recorded and importable from another
  process (not ``__main__``). ``load`` imports no module on the file's word: it uses the
  factory only if the caller names it (``load(path, factory=...)``, ``edgeexit export
  --factory``), if its module is already imported in this process, or if it is
  edgeexit's own code (an ``edgeexit.`` module other than ``edgeexit.__main__``: the
  examples the demo saves). Even then it calls it only if it is an ``nn.Module`` class or
  a ``@checkpointable`` factory: a file naming ``os:system`` or ``subprocess:run`` is
  refused before anything is called.
- *programs*: every segment and exit captured with ``torch.export`` and stored as data
  (``edgeexit.export.programs``): any model that exports can be saved this way, with no
  factory and no PYTHONPATH; the graphs may call pure tensor operators and size
  arithmetic only, and hold no text that anything evaluates.

Both keep the model inputs' spec and a few example rows. A plain pickled ``nn.Module``
(``torch.save(model)``) is loaded only with ``trust_pickle=True``, because unpickling runs
arbitrary code; so is a factory of any other kind, or one the file alone names. ``save``
reads back what it is about to write through the same checks, so a file it writes is one
``load`` takes.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import logging
import os
import pickle
import re
import sys
import types
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
from edgeexit.export.programs import capture, check_parts, plain_tensor, rebuild

FORMAT = "edgeexit.checkpoint/1"
FACTORY_ATTR = "_edgeexit_factory"
CHECKPOINTABLE_ATTR = "_edgeexit_checkpointable"  # marks a factory load() may call
log = logging.getLogger("edgeexit")
EXAMPLE_ROWS = 4  # example inputs kept in the file, for validation at export
# "package.module:function" or "package.module:Class.method", names only; no part a dunder
_NAME = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"
FACTORY_SPEC = re.compile(rf"{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*")


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
    A factory outside edgeexit must be named again to load the file in another process
    (``load(path, factory=...)``, ``edgeexit export --factory``). What is written is first
    read back through ``load``'s checks: a file ``load`` would refuse is not written.
    """
    check_contract(model)
    given = factory is not None
    if factory is None:
        factory, recorded = getattr(model, FACTORY_ATTR, (None, {}))
        factory_kwargs = recorded if factory_kwargs is None else factory_kwargs
    if given:
        _import_factory(factory, trusted=False, named=True)  # asked for: fail now
    elif factory is not None and not _importable_elsewhere(factory):
        factory = None  # defined in a script: another process could not import it
    out = files.check_output(path, "checkpoint", recognise=is_checkpoint)
    inputs = to_tensors(example_inputs)
    names = resolve_input_names(inputs, input_names, model)
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
    _check_as_loaded(buffer.getvalue(), out.path)
    files.write_bytes_atomic(out, buffer.getvalue(), what="checkpoint")
    return out.path


def _check_as_loaded(data: bytes, path: Path) -> None:
    """Read ``data`` as ``load`` will read the file, short of calling a factory."""
    try:
        doc = _read(io.BytesIO(data), path, trust_pickle=False)
        doc = _checked_doc(doc, path)
        if "programs" in doc:
            rebuild(doc["programs"], path, doc["example_inputs"])
        else:
            _import_factory(doc["factory"], trusted=False, named=True)
    except CheckpointError as err:
        raise CheckpointError(
            f"edgeexit.save did not write {path}, which load would refuse: {err}"
        ) from err


def is_checkpoint(path: Path) -> bool:
    """True for a file ``save`` wrote (read without running code)."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # (anything torch cannot read as weights is not ours)
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def load(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    factory: str | Callable[..., nn.Module] | None = None,
) -> Checkpoint:
    """Load a checkpoint written by ``save`` (or, if trusted, a pickled ``nn.Module``).

    ``factory`` ("package.module:function", or the function or class itself) builds a
    factory checkpoint's model instead of the factory the file names, which edgeexit
    imports only if it is edgeexit's own or its module is already imported (module
    docstring). It must be an ``nn.Module`` class or a ``@checkpointable`` factory, unless
    ``trust_pickle``.
    """
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
    doc = _read(path, path, trust_pickle=trust_pickle)
    if isinstance(doc, nn.Module):
        if factory is not None:
            raise CheckpointError(f"{path} is a pickled module; it takes no `factory`")
        return Checkpoint(doc, None, None)
    return _rebuild(_checked_doc(doc, path), path, trusted=trust_pickle, factory=factory)


def _read(source: Path | io.BytesIO, path: Path, *, trust_pickle: bool) -> Any:
    """The checkpoint's dict (or, if trusted, a pickled module), as torch.load reads it."""
    try:
        doc = torch.load(source, map_location="cpu", weights_only=not trust_pickle)
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
        return doc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an edgeexit checkpoint (no {FORMAT!r} format "
            "key); write it with edgeexit.save(model, path, example_inputs=...)"
        )
    return doc


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
        if not isinstance(state, dict) or not all(plain_tensor(v) for v in state.values()):
            problems.append("'state_dict' must map names to (dense, CPU) tensors")
    names = doc.get("input_names")
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        problems.append("'input_names' must be a list of strings")
    examples = doc.get("example_inputs")
    tensors = isinstance(examples, list | tuple) and examples
    if not tensors or not all(plain_tensor(x) for x in examples):
        problems.append("'example_inputs' must be a non-empty list of (dense, CPU) tensors")
    if problems:
        raise CheckpointError(f"{path} is a damaged edgeexit checkpoint: {problems[0]}")
    return {**doc, "factory_kwargs": dict(kwargs) if isinstance(kwargs, dict) else {}}


def _rebuild(
    doc: dict, path: Path, *, trusted: bool, factory: str | Callable[..., nn.Module] | None
) -> Checkpoint:
    examples, names = tuple(doc["example_inputs"]), tuple(doc["input_names"])
    if "programs" in doc:
        if factory is not None:
            raise CheckpointError(
                f"{path} holds captured programs, which need no factory; it takes no `factory`"
            )
        return Checkpoint(rebuild(doc["programs"], path, examples), examples, names)
    if factory is None:
        spec, fn = doc["factory"], _import_factory(doc["factory"], trusted=trusted, source=path)
    elif isinstance(factory, str):
        spec, fn = factory, _import_factory(factory, trusted=trusted, named=True)
    else:
        spec, fn = _name_of(factory), _callable_factory(factory, _name_of(factory), trusted)
    try:
        model = fn(**doc["factory_kwargs"])
        if not isinstance(model, nn.Module):
            raise TypeError(f"it returned a {type(model).__name__}, not an nn.Module")
        model.load_state_dict(doc["state_dict"], strict=True)
    except (TypeError, RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path}: factory {spec} could not rebuild the model: {first_line(err)}"
        ) from err
    model.eval()
    return Checkpoint(model, examples, names)


def _name_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _importable_elsewhere(spec: str) -> bool:
    """Whether another process could import the factory ``spec`` names: not one defined in
    a script (``__main__``), and importable here."""
    module = spec.partition(":")[0]
    if module == "__main__":
        return False
    try:
        _import_factory(spec, trusted=False, named=True)
    except CheckpointError:
        return False
    return True


def _import_factory(
    spec: str, *, trusted: bool, named: bool = False, source: Path | None = None
) -> Callable[..., nn.Module]:
    """The object ``spec`` names, if it may be called to build a model.

    A module is imported only if the caller ``named`` the factory, or ``trusted`` the
    file; else the factory must be edgeexit's own or come from a module already imported
    (``_imported``), and is found without running module ``__getattr__`` hooks, which may
    import more. Only an ``nn.Module`` subclass or a ``@checkpointable`` factory is callable
    without trust: anything else (``os:system``, ``subprocess:run``, ``builtins:exec``)
    would run what the file says. The checks come before any call.
    """
    where = f"{source} names factory" if source else "factory"
    if not isinstance(spec, str) or len(spec) > 500 or not FACTORY_SPEC.fullmatch(spec):
        raise CheckpointError(
            f"{where} {str(spec)[:80]!r}, which is not 'package.module:function' (Python "
            "names, none starting with '__')"
        )
    module_name, _, qualname = spec.partition(":")
    chosen = named or trusted
    module = sys.modules.get(module_name)
    if module is None and not (chosen or _edgeexit_module(module_name)):
        raise CheckpointError(
            f"{where} {spec!r}, from a module this process has not imported, and edgeexit "
            f"imports no module a model file names: name the factory yourself (`factory` "
            f"{spec}) if you trust that code, or pass `trust_pickle` if you trust this file"
        )
    try:
        obj: Any = module if module is not None else importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part) if chosen else _static_attr(obj, part)
    except Exception as err:  # (importing a module runs its code, which may raise anything)
        raise CheckpointError(
            f"factory {spec!r} is not importable ({first_line(err)}); expected "
            "'package.module:function' on the Python path"
        ) from err
    return _callable_factory(obj, spec, trusted, where)


def _callable_factory(
    obj: Any, spec: str, trusted: bool, where: str = "factory"
) -> Callable[..., nn.Module]:
    is_model_class = inspect.isclass(obj) and issubclass(obj, nn.Module)
    if is_model_class or getattr(obj, CHECKPOINTABLE_ATTR, False) is True:
        return obj
    if not trusted or not callable(obj):
        raise CheckpointError(
            f"{where} {spec!r}, which is neither an nn.Module class nor a @checkpointable "
            "factory: edgeexit will not call it. Decorate your factory with "
            "@edgeexit.checkpointable, or pass `trust_pickle` if you trust this file"
        )
    return obj


def _edgeexit_module(name: str) -> bool:
    """edgeexit's own modules, which a file may name (the examples' factories): the tool's
    code, not the file's; never ``edgeexit.__main__``, which runs the CLI."""
    parts = name.split(".")
    return parts[0] == "edgeexit" and "__main__" not in parts


def _static_attr(obj: Any, name: str) -> Any:
    """``getattr`` that runs no code of ``obj``'s: a module's own namespace (not its
    ``__getattr__``, which may import), a class's attribute without descriptors."""
    if isinstance(obj, types.ModuleType):
        namespace = vars(obj)
        if name not in namespace:
            raise AttributeError(f"module {obj.__name__!r} defines no {name!r}")
        return namespace[name]
    return inspect.getattr_static(obj, name)
