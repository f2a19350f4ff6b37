"""How targets look on a terminal: a table of every target, or one target's details."""

from __future__ import annotations

from rich import box
from rich.table import Table

from edgeexit.targets.spec import Target


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def targets_table(targets: list[Target]) -> Table:
    table = Table(
        title="edgeexit targets",
        caption="thr: intra-op threads; IR/op: highest ONNX IR/opset; W: idle/active model",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("name", "arch", "providers", "thr", "prec", "IR/op", "energy", "W"):
        table.add_column(col, no_wrap=True)
    for t in targets:
        table.add_row(
            t.name,
            t.arch,
            ", ".join(_short(p) for p in t.providers),
            str(t.intra_op_threads or "all"),
            t.precision,
            f"{t.max_ir_version}/{t.max_opset}",
            t.energy_meter,
            f"{t.idle_power_w:g}/{t.active_power_w:g}",
        )
    return table


def target_details(t: Target) -> Table:
    table = Table(title=f"target {t.name}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = {
        "description": t.description,
        "arch": t.arch,
        "providers": ", ".join(t.providers),
        "provider options": ", ".join(str(o) for o in t.provider_options) or "-",
        "intra-op threads": str(t.intra_op_threads or "all cores"),
        "spinning": "on" if t.allow_spinning else "off",
        "graph optimization": t.graph_optimization,
        "precision": t.precision,
        "max ONNX IR / opset": f"{t.max_ir_version} / {t.max_opset}",
        "energy meter": t.energy_meter,
        "power model": f"{t.idle_power_w:g} W idle, {t.active_power_w:g} W active",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table
