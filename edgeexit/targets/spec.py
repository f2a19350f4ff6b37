"""Target specs: what a device runs (providers, threads, precision, ONNX limits) and how its
energy is measured or modeled. Specs are TOML files shipped in ``edgeexit/targets/specs/``
(the CLI and the docs call them target profiles); a user can pass the path of their own.

Not to be confused with a cost profile (``edgeexit.measure.cost_profile``): what a bundle
was measured to cost on a device."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeexit import documents
from edgeexit.errors import TargetError
from edgeexit.targets.checks import check_values

SPEC_DIR = Path(__file__).parent / "specs"


@dataclass(frozen=True)
class Target:
    """One device, as the runtime and the exporter need to know it."""

    name: str
    description: str
    arch: str  # "x86_64" or "aarch64"
    providers: tuple[str, ...]
    provider_options: tuple[dict[str, Any], ...] = ()
    intra_op_threads: int | None = None  # None: ONNX Runtime's default (all cores)
    allow_spinning: bool = True
    graph_optimization: str = "all"  # disable | basic | extended | all
    precision: str = "fp32"  # fp32 | int8 | fp16
    max_ir_version: int = 10
    max_opset: int = 21
    energy_meter: str = "auto"  # auto | rapl | nvml | ina3221 | rpi5-pmic | modeled | none
    idle_power_w: float = 0.0
    active_power_w: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def host_arch() -> str:
    """This machine's architecture, spelled as in profiles (x86_64, aarch64)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def available_targets() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.toml"))


def load_target(name_or_path: str | os.PathLike | Target | None) -> Target:
    """A shipped profile by name, a user's TOML file by path, or the host default."""
    if isinstance(name_or_path, Target):
        return name_or_path
    if name_or_path is None:
        name_or_path = "x86-cpu"
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SPEC_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise TargetError(
                f"unknown target {str(name_or_path)!r}; expected one of "
                f"{', '.join(available_targets())} or the path of a .toml profile"
            )
    doc = documents.read_toml(path, "target profile", TargetError)
    return parse_target(doc, source=str(path))


def parse_target(doc: dict[str, Any], *, source: str = "<profile>") -> Target:
    """Build a Target from a parsed TOML document, or raise one TargetError naming every problem."""
    known = set(Target.__dataclass_fields__) - {"extra"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise TargetError(f"{source}: unknown key {unknown[0]!r}; expected keys: {sorted(known)}")
    for required in ("name", "arch", "providers"):
        if required not in doc:
            raise TargetError(f"{source}: missing required key {required!r}")
    values = dict(doc)
    values.setdefault("description", values["name"])
    problems = check_values(values)
    if problems:
        raise TargetError(f"{source}: {'; '.join(problems)}")
    values["providers"] = tuple(values["providers"])
    values["provider_options"] = tuple(dict(o) for o in values.get("provider_options", ()))
    return Target(**values)
