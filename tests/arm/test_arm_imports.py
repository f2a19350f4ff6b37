"""The device path imports nothing outside edgeexit's declared runtime dependencies: the check
that `pip install edgeexit` is enough on a Pi.

pytest is installed next to those dependencies and has already imported modules of its own
(pluggy, iniconfig, ...) before this test runs. So the test first hides every module that is
neither standard library nor part of a declared dependency, imports edgeexit afresh, drives
the device path, and then looks at what got imported. It stays in one process: without
binfmt, a subprocess of the emulated Python would not be emulated.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement
from typer.testing import CliRunner


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(root: str = "edgeexit") -> set[str]:
    """``root`` and everything its installed metadata requires, recursively, extras honoured."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        seen.add(normalized(name))
        for text in md.distribution(name).requires or ():
            req = Requirement(text)
            active = req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            )
            if active and normalized(req.name) not in seen:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def allowed_top_level_names() -> set[str]:
    declared = declared_distributions()
    from_declared = {
        top
        for top, dists in md.packages_distributions().items()
        if any(normalized(d) in declared for d in dists)
    }
    return set(sys.stdlib_module_names) | set(sys.builtin_module_names) | from_declared


def top_level(module_name: str) -> str:
    return module_name.partition(".")[0]


@contextlib.contextmanager
def only_declared_modules_loaded(allowed: set[str]) -> Iterator[None]:
    """Hide undeclared modules and edgeexit itself from sys.modules; put them back after."""
    hidden = {
        name: module
        for name, module in sys.modules.items()
        if top_level(name) == "edgeexit"
        or (top_level(name) not in allowed and not name.startswith("__"))
    }
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if top_level(n) == "edgeexit"]:
            del sys.modules[name]
        sys.modules.update(hidden)


def undeclared_modules(allowed: set[str]) -> list[str]:
    """Loaded modules from files outside the standard library and the declared dependencies.

    Modules without a file (built in, or made in memory like Cython's ``_cython_3_*``
    registries) cannot come from an undeclared package, so they are not counted; nor are
    standard-library files missing from ``sys.stdlib_module_names`` (``_sysconfigdata_*``).
    """
    stdlib_dirs = tuple({sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")})
    return sorted(
        f"{name} ({module.__file__})"
        for name, module in list(sys.modules.items())
        if top_level(name) not in allowed
        and not name.startswith("__")
        and getattr(module, "__file__", None)
        and not module.__file__.startswith(stdlib_dirs)
    )


def drive_device_path(artifacts: Path) -> None:
    """What a Pi does with edgeexit: run a bundle, and use the device CLI."""
    import edgeexit
    from edgeexit.cli import app

    x = np.load(artifacts / "inputs.npz")["x"][:4]
    edgeexit.Runtime(artifacts / "int8-rpi4", target="rpi4").run(x)
    bundle, data = str(artifacts / "fp32"), str(artifacts / "inputs.npz")
    for args in (
        ["targets", "--json"],
        ["run", bundle, "-i", data, "-t", "rpi4", "--json"],
        ["profile", bundle, "-t", "rpi4", "--repeats", "2", "--warmup", "0", "--json"],
        ["generate", str(artifacts / "decoder"), "--prompt-ids",
         str(artifacts / "decoder_prompt.txt"), "-n", "4", "--mode", "self-speculative"],
    ):  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"edgeexit {' '.join(args)}: {result.output}"


def test_declared_closure_includes_the_runtime_dependencies():
    declared = declared_distributions()
    assert {"edgeexit", "onnxruntime", "numpy", "typer", "rich"} <= declared
    assert "pytest" not in declared  # the test tool is installed, but not declared


def test_device_path_imports_only_declared_dependencies(host_artifacts: Path):
    allowed = allowed_top_level_names()
    with only_declared_modules_loaded(allowed):
        drive_device_path(host_artifacts)
        leaked = undeclared_modules(allowed)
        loaded_from = sys.modules["edgeexit"].__file__
    assert not leaked, f"the device path imported undeclared modules: {leaked}"
    assert loaded_from.startswith("/opt/edgeexit/"), f"tested a source tree: {loaded_from}"
