"""Public names resolved on first access (PEP 562), so that importing a package stays light.

``import edgeexit`` must not import torch, onnx or onnxsim (a device installs none of them),
yet ``edgeexit.export`` and ``edgeexit.examples.digits_resnet`` are public. Both packages
name their exports in a table and get their module ``__getattr__`` from here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(
    package: str, table: Mapping[str, str], modules: frozenset[str] = frozenset()
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``table`` maps each public name to the
    module defining it; names in ``modules`` are that module itself. A resolved name is
    stored in the package, so the lookup happens once."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = importlib.import_module(module)
        if name not in modules:
            value = getattr(value, name)
        namespace[name] = value
        return value

    return __getattr__
