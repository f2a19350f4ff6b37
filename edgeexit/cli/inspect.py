"""`edgeexit inspect BUNDLE`: what a bundle holds, checked, without running it."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeexit.cli.core import command, fail
from edgeexit.energy import choose_meter
from edgeexit.files import dumps_json
from edgeexit.generation.caches import bytes_in_words
from edgeexit.generation.graphs import in_words, needed_onnxruntime
from edgeexit.generation.manifest import DecoderManifest, draft_in_words, form_in_words
from edgeexit.inspection import BundleInfo, DecoderInfo, describe_bundle
from edgeexit.targets import load_target

TOP_OPS = 4  # operators named per segment in the table; --json has them all
OPERATORS = "top operators"  # the table's one column that wraps


@command("inspect")
def inspect_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle directory."),
    memory: bool = typer.Option(
        False,
        "--memory",
        help="Also open each segment (with its head) and report the resident memory "
        "it adds (RSS growth, MB; Linux).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON object."),
) -> None:
    """Show what a bundle holds: inputs, segments (size, operators, carry, threshold),
    criterion, precision, target, a calibration summary, and an integrity check (every
    file against its sha256). Exits 1 if the check fails, after the report.

    A decoder bundle (a language model) shows its sizes, its graphs, the memory its caches
    and buffers take against what this machine has available, and its generation settings.

    The last line says what energy figures `edgeexit run` would give here, and why no
    sensor was read if none was.

    Examples:

        edgeexit inspect bundle/

        edgeexit inspect bundle/ --json

        edgeexit inspect bundle/ --memory
    """
    info = describe_bundle(bundle, memory=memory)
    energy = choose_meter(load_target(None))[1]  # what `run` here would report
    if as_json:
        typer.echo(dumps_json({**info.to_json(), "energy_here": energy.to_json()}))
    else:
        (_render_decoder if isinstance(info, DecoderInfo) else _render)(info)
        Console().print(escape(f"energy here: {energy.describe()}"))
    if not info.intact:
        raise fail(f"integrity check failed: {info.integrity}")


def _outputs(doc: dict) -> str:
    """What every exit gives, in words."""
    if doc["output"] == "tensor":
        shape = ", ".join(map(str, doc["output_shape"] or ["?"]))
        return f"exits give tensors [{shape}]"
    if doc["output"] == "tokens":
        return (f"{doc['num_classes']} classes per token ({doc['tokens']} tokens; each leaves "
                "at its own exit, finished tokens dropped)")  # fmt: skip
    return f"{doc['num_classes']} classes"


def _render(info: BundleInfo) -> None:
    doc = info.to_json()
    console = Console()
    inputs = ", ".join(f"{i['name']} {i['dtype']}[{', '.join(map(str, i['shape']))}]"
                       for i in doc["inputs"])  # fmt: skip
    where = escape(str(info.path))
    console.print(
        f"bundle {where}: {len(info.segments)} segments, criterion {doc['criterion']}, "
        f"{doc['precision']}, target {doc['target'] or 'any'}, {escape(_outputs(doc))}, "
        f"opset {doc['opset']} ({doc['exporter']}, edgeexit {doc['edgeexit_version']})"
    )
    console.print(f"inputs: {escape(inputs)}")
    columns = ["#", "file", "KiB", "nodes", OPERATORS, "carry", "threshold"]
    measured = any(s.resident_mb is not None for s in info.segments)
    bodies = any(s.body_bytes is not None for s in info.segments)
    columns += (["body\nKiB"] if bodies else []) + (["RSS\nMB"] if measured else [])
    table = _table("Segments (backbone block + exit head)", columns)
    for s in info.segments:
        top = ", ".join(f"{op} {n}" for op, n in list(s.ops.items())[:TOP_OPS])
        last = s.index == len(info.segments) - 1
        threshold = (
            "always" if last else ("never" if math.isinf(s.threshold) else f"{s.threshold:.4f}")
        )
        row = [str(s.index), s.file, f"{s.size_bytes / 1024:.1f}", str(sum(s.ops.values())),
               top, str(len(s.carry)), threshold]  # fmt: skip
        if bodies:
            row.append("-" if s.body_bytes is None else f"{s.body_bytes / 1024:.1f}")
        if measured:
            row.append("-" if s.resident_mb is None else f"{s.resident_mb:.1f}")
        table.add_row(*row)
    if info.shared_bytes:
        table.caption = (
            f"plus {info.shared_bytes / 1024:.1f} KiB of weights several segments hold, "
            "stored once (shared_weights.bin)"
        )
    if bodies:
        note = "a body (the block without its head) runs while its exit's threshold is never"
        table.caption = f"{table.caption}; {note}" if table.caption else note
    for s in info.segments:
        if s.plain_bytes is not None:
            note = (f"the plain network up to exit {s.index} as one graph "
                    f"({s.plain_bytes / 1024:.1f} KiB) runs alone while every exit before it "
                    "is never")  # fmt: skip
            table.caption = f"{table.caption}; {note}" if table.caption else note
    prefixed = [s for s in info.segments if s.prefix_bytes is not None]
    if prefixed:
        kib = sum(s.prefix_bytes for s in prefixed) / 1024
        which = ", ".join(str(s.index) for s in prefixed)
        exits = f"exits {which} have" if len(prefixed) > 1 else f"exit {which} has"
        note = (f"{exits} a prefix graph "
                f"(every earlier body and the segment as one graph, {kib:.1f} KiB in all): the "
                "first graph run while every exit before them is never")  # fmt: skip
        table.caption = f"{table.caption}; {note}" if table.caption else note
    if measured:
        note = "RSS: resident memory each segment's session adds, opened after the ones before"
        table.caption = f"{table.caption}; {note}" if table.caption else note
    # the notes run the console's width below the table, not its own (a narrow one)
    notes, table.caption = table.caption, None
    console.print(table)
    if notes:
        console.print(escape(notes))
    console.print(escape(_calibration_line(doc["calibration"])))
    if doc["split"] is not None:
        console.print(escape(_split_line(doc["split"])))
    colour = "green" if info.intact else "red"
    check = "every file matches its sha256" if info.intact else escape(info.integrity)
    console.print(f"integrity: [{colour}]{check}[/{colour}]")


def _table(title: str, columns: list[str]) -> Table:
    """A table that fits 80 columns: no vertical rules, and every column but the operators
    kept whole (rich narrows all of a table's columns alike: 'segment_…', 'thresho…')."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for col in columns:
        left = col in ("file", OPERATORS)
        table.add_column(col, justify="left" if left else "right", no_wrap=col != OPERATORS)
    return table


def _split_line(split: dict) -> str:
    if "problem" in split:
        return f"split: not usable: {split['problem']}"
    server = split["server_exits"]
    return (f"split: after exit {split['at']}, exits {server[0]}-{server[-1]} on a server "
            f"(edgeexit serve); carry {split['carry_bytes']:,} B per sample as "
            f"{split['encoding']}")  # fmt: skip


def _calibration_line(cal: dict | None) -> str:
    if not cal:
        return "calibration: none (thresholds as exported; run edgeexit calibrate)"
    budget = ", ".join(f"{k}={v}" for k, v in (cal["budget"] or {}).items())
    parts = [f"calibration: budget {budget} on {cal['samples']} samples"]
    if cal["certified"]:
        parts.append(f"certified {cal['certified']} at confidence {cal['confidence']}")
    if cal["expected_mean_latency_ms"] is not None:
        parts.append(
            f"expected {cal['expected_mean_latency_ms']:.4g} ms mean, accuracy "
            f"{100 * cal['expected_accuracy']:.2f} % (costs: {cal['costs_from']})"
        )
    return "; ".join(parts)


def _render_decoder(info: DecoderInfo) -> None:
    m, console = info.manifest, Console()
    eos = ", ".join(map(str, m.eos_token_ids)) or "none"
    console.print(
        f"decoder bundle {escape(str(info.path))}: {m.num_exits} segments ({m.layers} layers) "
        f"and one shared head; vocabulary {m.vocab_size}, dim {m.dim} ({m.heads} heads x "
        f"{m.head_dim}{_kv_note(m)}), up to {m.max_positions} positions, end of text {eos}, "
        "tokenizer "
        f"{escape(str(m.extra.get('tokenizer') or 'none (token ids)'))}"
    )
    table = Table(title="Graphs (segments of decoder layers; the head every exit shares)")
    measured = any(g.resident_mb is not None for g in info.graphs)
    columns = ["graph", "file", "KiB", "layers", "nodes", "top operators"]
    for col in columns + (["resident MB"] if measured else []):
        table.add_column(
            col, justify="left" if col in ("graph", "file", "top operators") else "right"
        )
    for g in info.graphs:
        top = ", ".join(f"{op} {n}" for op, n in list(g.ops.items())[:TOP_OPS])
        label = "head" if g.index is None else str(g.index)
        row = [f"draft {label}" if g.draft else label, g.file, f"{g.size_bytes / 1024:.1f}",
               str(g.layers or "-"), str(sum(g.ops.values())), top]  # fmt: skip
        if measured:
            row.append("-" if g.resident_mb is None else f"{g.resident_mb:.1f}")
        table.add_row(*row)
    console.print(table)
    need = needed_onnxruntime(m)
    runs_on = f" (needs onnxruntime >= {in_words(need)})" if need else ""
    console.print(escape(f"graphs: {form_in_words(m)}{runs_on}"))
    console.print(escape(f"self-speculative drafts with: {draft_in_words(m)}"))
    console.print(escape(_memory_line(info)))
    console.print(escape(_generation_line(m.generation)))
    colour = "green" if info.intact else "red"
    check = "every file matches its sha256" if info.intact else escape(info.integrity)
    console.print(f"integrity: [{colour}]{check}[/{colour}]")


def _kv_note(m: DecoderManifest) -> str:
    """Grouped-query attention: the caches hold fewer heads than attend."""
    return f", {m.kv_heads} key/value heads" if m.kv_heads != m.heads else ""


def _memory_line(info: DecoderInfo) -> str:
    mem, m = info.memory, info.manifest
    line = (f"memory: {bytes_in_words(mem.total_bytes)} allocated at load: caches "
            f"{bytes_in_words(mem.cache_bytes)} ({m.layers} layers x {m.max_positions} positions "
            f"x {m.kv_heads} heads x {m.head_dim}, keys and values, float32), buffers "
            f"{bytes_in_words(mem.buffer_bytes)}")  # fmt: skip
    if info.available_bytes is not None:
        verdict = "fits" if info.fits else "DOES NOT FIT: generate refuses it here"
        line += f"; {bytes_in_words(info.available_bytes)} available now ({verdict})"
    return line


def _generation_line(block: dict) -> str:
    if not block:
        return "generation: not calibrated (edgeexit calibrate-generation chooses its settings)"
    parts = []
    spec = block.get("self_speculative")
    if spec:
        parts.append(f"self-speculative k={spec.get('k', 1)}, gamma={spec.get('gamma', 4)}, "
                     f"draft stop {spec.get('draft_stop', 0.0):g}")  # fmt: skip
    thresholds = block.get("early_exit")
    if thresholds is not None:
        shown = ", ".join("never" if t is None or math.isinf(t) else f"{t:g}" for t in thresholds)
        parts.append(f"early-exit thresholds {shown}")
    report = block.get("report") or {}
    if report.get("calibration_agreement") is not None:
        figure = f"agreement with full {report['calibration_agreement']:.1%} on calibration prompts"
        if report.get("held") is not None and report.get("held_out_agreement") is not None:
            word = "met" if report["held"] else "MISSED"
            figure += f", {report['held_out_agreement']:.1%} held-out ({word})"
        parts.append(figure)
    return "generation: " + "; ".join(parts)
