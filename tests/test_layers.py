"""The package's imports run one way (docs/design.md, "Layers").

Read from the source, not from a running interpreter, so that an import inside a function
counts as much as one at the top: a function-level import is allowed for its cost (torch
in a command that may not need it), never to dodge a cycle, and it must obey the same
direction as any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "edgeexit"

# Lowest first. A module may import its own package and anything in an earlier layer.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "errors lazy onnxproto progress",  # utilities: stdlib only
        "files",
        "documents targets",  # targets is a leaf: what a device is
        "criteria",
        "bundle budget",  # the contract between host and device
        "split",  # a bundle split between a device and a server
        "data",
        "energy",
        "runtime",
        "offload",  # a split bundle's device side and its wire
        "measure",
        "generation",
        "inspection",  # the device side ends here (inspect describes decoder bundles too)
        "compile serve",  # host only from here on (serve: Ray Serve, edgeexit[serve])
        "calibrate",
        "export",
        "examples",
        "cli",
        "__main__",
    )
)
DEVICE_SIDE = frozenset().union(*LAYERS[:13])
HOST_ONLY = frozenset().union(*LAYERS[13:17])
EXPORT_LIBRARIES = ("torch", "onnx", "onnxsim", "onnxscript", "transformers", "ray", "starlette")
# Function-level imports inside one package that are not about cost, and why.
DEFERRED_ON_PURPOSE = {
    ("cli", "cli.commands"): "the application is imported with Ctrl-C held back (cli.main)",
}


def _layer(top: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def _imports() -> list[tuple[str, str, bool]]:
    """(importing module, imported module, at function level) for every edgeexit module,
    as dotted names below ``edgeexit``; third-party modules keep their own names."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        here = name.split(".") if is_package else name.split(".")[:-1]
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    targets = [".".join(["edgeexit", *base, *filter(None, [node.module])])]
                else:
                    targets = [node.module]
            else:
                continue
            for target in targets:
                if target == "edgeexit" or target.startswith("edgeexit."):
                    target = target.removeprefix("edgeexit").lstrip(".") or "edgeexit"
                found.append((name, target, id(node) not in top_level))
    return found


IMPORTS = _imports()
OURS = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.iterdir()}


# Modules that import the export side at their top: importing one costs seconds.
HEAVY = {s for s, t, deferred in IMPORTS if not deferred and t.split(".")[0] in EXPORT_LIBRARIES}


def _ours(target: str) -> bool:
    return target.split(".")[0] in OURS


def test_every_package_has_a_layer():
    packages = {
        p.name.removesuffix(".py")
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()
    }
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


@pytest.mark.parametrize("source, target, deferred", [i for i in IMPORTS if _ours(i[1])])
def test_imports_run_down_the_layers(source, target, deferred):
    if source == "" or target == "edgeexit":  # the package root: the public facade
        return
    mine, theirs = source.split(".")[0], target.split(".")[0]
    if mine == theirs:
        if deferred and target not in HEAVY:
            assert (source, target) in DEFERRED_ON_PURPOSE, (
                f"{source} imports {target} inside a function: import it at the top, or "
                "break the cycle it avoids"
            )
        return
    assert _layer(theirs) < _layer(mine), f"{source} imports {target}, a layer above it"


@pytest.mark.parametrize(
    "source, target",
    [(s, t) for s, t, _ in IMPORTS if s.split(".")[0] in DEVICE_SIDE],
)
def test_the_device_side_never_reaches_the_host_side(source, target):
    top = target.split(".")[0]
    assert top not in HOST_ONLY, f"{source} imports the host-only {target}"
    assert top not in EXPORT_LIBRARIES, f"{source} imports {target}: a device installs none"


def test_targets_is_a_leaf():
    reached = {t.split(".")[0] for s, t, _ in IMPORTS if s.startswith("targets") and _ours(t)}
    assert reached <= {"errors", "files", "documents", "targets"}, reached
