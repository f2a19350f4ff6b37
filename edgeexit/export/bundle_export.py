"""Export a multi-exit model as a bundle: one ONNX file per segment + exit, and a manifest.

Segment i's graph inputs are named after segment i-1's carry outputs (``carry_{i-1}_{k}``;
segment 0 takes the model inputs); it outputs ``carry_{i}_{k}`` (none for the last segment),
``logits_{i}`` and ``score_{i}``. Thresholds start at ``inf``: every sample runs to the last
exit, so an uncalibrated bundle is the full model. The bundle is written into a temporary
directory, validated there, and renamed into place only if everything succeeded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import edgeexit
from edgeexit import files
from edgeexit.bundle import (
    BATCH_DIM,
    INPUT_SUM,
    GraphFile,
    InputSpec,
    Manifest,
    SegmentSpec,
    atomic_bundle_dir,
    check_bundle_output,
    read_manifest,
    write_manifest,
)
from edgeexit.compile.compiler import compile_exported
from edgeexit.compile.plain_graph import CannotJoin, join_graphs, joined_outputs, with_input_sum
from edgeexit.compile.shared_weights import store_once
from edgeexit.criteria import CRITERIA
from edgeexit.errors import ExportError, InputError, ModelContractError, first_line
from edgeexit.export.convert import export_graph, tidy_graph
from edgeexit.export.graphs import BodyGraph, SegmentGraph, WholeGraph
from edgeexit.export.inputs import resolve_input_names, to_tensors
from edgeexit.export.model import ExitStep, check_contract, run_exits
from edgeexit.export.options import DEFAULT_OPSET, MAX_OPSET, ExportOptions
from edgeexit.export.scores import check_criterion
from edgeexit.export.validate import ValidationReport, validate_bundle
from edgeexit.progress import Progress, or_silent
from edgeexit.runtime.session import cpu_session
from edgeexit.targets import load_target


@dataclass(frozen=True)
class ExportResult:
    """A written bundle: where it is, its manifest, and the validation report (if run)."""

    bundle_dir: Path
    manifest: Manifest
    report: ValidationReport | None = None
    compiled: object | None = None  # a targets CompileReport when exported for a target

    def __rich_console__(self, console, options):
        if self.report is not None:
            yield self.report
        if self.compiled is not None:
            yield self.compiled
        m = self.manifest
        yield (
            f"[green]wrote[/green] {self.bundle_dir}: {m.num_exits} segments, "
            f"criterion {m.criterion}, opset {m.extra.get('opset')}"
        )


def export(
    model: nn.Module,
    example_inputs: object,
    out_dir: str | os.PathLike,
    *,
    criterion: str = "confidence",
    target: str | None = None,
    opset: int | None = None,
    progress: Progress | None = None,
    **more: object,
) -> ExportResult:
    """Export ``model`` to the bundle directory ``out_dir`` and validate it.

    ``more`` sets other ExportOptions fields (atol, input_names, exporter, criterion_params,
    simplify, validate, bodies). ``progress(stage, done, total)`` follows it stage by stage.
    Raises an EdgeExitError subclass; on failure nothing is written.
    """
    try:
        options = ExportOptions(criterion=criterion, target=target, opset=opset, **more)
    except TypeError as err:
        raise ExportError(f"{err}; expected keywords among ExportOptions' fields") from err
    return export_bundle(model, example_inputs, out_dir, options, progress=progress)


def export_bundle(
    model: nn.Module,
    example_inputs: object,
    out_dir: str | os.PathLike,
    options: ExportOptions,
    *,
    sources: tuple[str | os.PathLike, ...] = (),
    progress: Progress | None = None,
) -> ExportResult:
    """Export and validate with ``options``; the bundle appears only if everything passed.

    ``out_dir`` must be new, an empty folder or an edgeexit bundle, and may not be the
    working directory or hold any of ``sources`` (the files this export reads): checked
    before anything is traced, and again when the new bundle replaces the old one.
    """
    if options.calib_data is not None:
        sources = (*sources, options.calib_data)
    check_bundle_output(out_dir, inputs=sources)
    tell = or_silent(progress)
    inputs = to_tensors(example_inputs)
    names = resolve_input_names(inputs, options.input_names, model)
    target = _resolve_target(options)
    tell("tracing the model", 0, 0)
    steps = trace(model, inputs, options.criterion, options.output)
    with atomic_bundle_dir(out_dir, inputs=sources) as tmp:
        segments, exporters, opset = _export_segments(
            model, steps, names, tmp, options, target, tell
        )
        _with_input_sum(tmp, segments[0], _at_least_two(steps[0].carry_in))
        segments = _with_joined_graphs(
            tmp, segments, _at_least_two(steps[0].carry_in), options, tell
        )
        # weights several graphs hold (a shared layer; a segment and its body), once
        segments, done = store_once(tmp, segments)
        shared = {"tensors": done.tensors, "file_bytes": done.file_bytes,
                  "saved_bytes": done.saved_bytes}  # fmt: skip
        manifest = Manifest(
            inputs=tuple(
                InputSpec(n, numpy_dtype(x), (BATCH_DIM, *x.shape[1:]))
                for n, x in zip(names, inputs)
            ),
            segments=tuple(segments),
            criterion=options.criterion,
            thresholds=_initial_thresholds(options, len(steps)),
            criterion_params=_criterion_params(options),
            output=options.output,
            extra={
                "precision": "fp32",
                **_output_extra(steps[-1].logits, options.output),
                "opset": opset,
                "ir_version": onnx.load(str(tmp / segments[0].file)).ir_version,
                "target": target.name,
                "exporter": "+".join(sorted(exporters)),
                "edgeexit_version": edgeexit.__version__,
                **({"shared_weights": shared} if done.tensors else {}),
            },
        )
        write_manifest(tmp, manifest)
        report = None
        if options.validate:
            report = validate_bundle(model, tmp, inputs, atol=options.atol, progress=tell)
        if options.target is not None:
            tell(f"compiling for {options.target}", 0, 0)
        compiled = _compile_for_target(tmp, options)
        if compiled is not None:
            manifest = read_manifest(tmp)
    return ExportResult(Path(out_dir), manifest, report, compiled)


def _export_segments(
    model: nn.Module,
    steps: list[ExitStep],
    names: tuple[str, ...],
    tmp: Path,
    options: ExportOptions,
    target: _TargetLimits,
    tell: Progress,
) -> tuple[list[SegmentSpec], set[str], int]:
    """Write segment_{i}.onnx for every exit, and body_{i}.onnx (the block without its
    head) for every exit but the last under a criterion the runtime need not follow
    exit by exit; return their specs, the exporters used and the highest opset written."""
    segments, exporters, opsets = [], set(), set()
    carry_in = names
    # (per-token exits read every head: each token's score decides where it leaves)
    bodies = (
        options.bodies
        and CRITERIA[options.criterion].runtime_state is None
        and options.output != "tokens"
    )
    for i, step in enumerate(steps):
        tell("exporting segments", i, len(steps))
        last = i == len(steps) - 1
        carry = () if last else tuple(f"carry_{i}_{k}" for k in range(len(step.carry_out)))
        outputs = (*carry, f"logits_{i}", f"score_{i}")
        file = tmp / f"segment_{i:02d}.onnx"
        example = _at_least_two(step.carry_in)
        settings = dict(
            opset=target.opset,
            max_opset=None if target.opset_fixed else target.max_opset,
            exporter=options.exporter,
            simplify=options.simplify,
            max_ir_version=target.max_ir_version,
        )
        if options.output == "tokens":  # the token axis shrinks as tokens leave
            settings["axes"] = _token_axes(carry_in, (*carry, *outputs[-2:]), first=i == 0)
        used, opset = export_graph(
            SegmentGraph(model, i, options.criterion, options.output), example, file,
            carry_in, outputs,
            **settings,
        )  # fmt: skip
        exporters.add(used)
        opsets.add(opset)
        body = None
        if bodies and not last:
            body_file = tmp / f"body_{i:02d}.onnx"
            export_graph(BodyGraph(model, i), example, body_file, carry_in, carry, **settings)
            _check_body(file, body_file, carry_in, carry, example, options.atol)
            body = GraphFile(body_file.name, "")
        segments.append(SegmentSpec(file.name, "", carry_in, carry, *outputs[-2:], body=body))
        carry_in = carry
    tell("exporting segments", len(steps), len(steps))
    return segments, exporters, max(opsets)


def _token_axes(
    inputs: Sequence[str], outputs: Sequence[str], *, first: bool
) -> dict[str, dict[int, str]]:
    """Dynamic axes of a segment with per-token exits: the batch everywhere, and the tokens
    on every carry and output (segment 0 reads every token: its inputs keep their length)."""
    axes = {name: {0: BATCH_DIM} if first else {0: BATCH_DIM, 1: "tokens"} for name in inputs}
    axes.update({name: {0: BATCH_DIM, 1: "tokens"} for name in outputs})
    return axes


def _check_body(
    fused: Path, body: Path, inputs: Sequence[str], carry: Sequence[str], example, atol: float
) -> None:
    """The body hands on what the segment with its head does, under ONNX Runtime."""
    feeds = {n: x.detach().numpy() for n, x in zip(inputs, example)}
    want = cpu_session(fused, what=fused.name, error=ExportError).run(list(carry), feeds)
    got = cpu_session(body, what=body.name, error=ExportError).run(list(carry), feeds)
    for name, w, g in zip(carry, want, got):
        if w.shape != g.shape or not np.allclose(w, g, atol=atol, rtol=0):
            raise ExportError(
                f"{body.name} output {name!r} differs from {fused.name}'s; expected the "
                "block without its head to hand on the same carry"
            )


def _with_joined_graphs(
    tmp: Path, segments: list[SegmentSpec], example, options: ExportOptions, tell: Progress
) -> list[SegmentSpec]:
    """The segments with their joined graphs: every earlier body, then the segment, as one
    graph. The last segment's is its ``plain`` graph (the plain network, the last exit's
    logits out); each other's but the first is its ``prefix`` (its carry, logits and score
    out: the chain's first graph while every exit before it is disabled), up to exit
    ``options.max_prefix``. Each is checked under ONNX Runtime against the chain of
    segments; none from the first exit without a body on, or where the graphs cannot be
    joined (they differ in opset)."""
    specs = list(segments)
    for k in range(1, len(segments)):
        tell("joining graphs", k - 1, len(segments) - 1)
        if segments[k - 1].body is None:
            break
        spec, last = segments[k], k == len(segments) - 1
        if not last and k > options.max_prefix:
            continue
        outputs = joined_outputs(spec, last)
        parts = [tmp / s.body.file for s in segments[:k]] + [tmp / spec.file]
        try:
            joined = join_graphs([onnx.load(p) for p in parts], outputs=outputs)
        except CannotJoin:
            break  # graphs 0..k differ in opset: so do 0..k+1
        # onnxsim: the bodies repeat what one graph computes once (the attention mask's shapes)
        joined = with_input_sum(tidy_graph(joined, options.simplify))
        file = tmp / f"{'plain' if last else 'prefix'}_{k:02d}.onnx"
        onnx.save(joined, file)
        _check_joined(file, tmp, segments[: k + 1], example, options.atol, outputs)
        graph = GraphFile(file.name, "")
        specs[k] = replace(spec, plain=graph) if last else replace(spec, prefix=graph)
    return specs


def _check_joined(
    file: Path, tmp: Path, segments: Sequence[SegmentSpec], example, atol: float,
    outputs: Sequence[str],
) -> None:  # fmt: skip
    """The joined graph gives ``outputs`` as the chain of ``segments`` does, and the sum of
    its inputs, under ONNX Runtime."""
    inputs = [x.detach().numpy() for x in example]
    feeds = inputs
    for spec in segments:
        session = cpu_session(tmp / spec.file, what=spec.file, error=ExportError)
        names = [*spec.carry, spec.logits, spec.score]
        want = dict(zip(names, session.run(names, _fed(session, spec.inputs, feeds))))
        feeds = [want[name] for name in spec.carry]
    session = cpu_session(file, what=file.name, error=ExportError)
    sums = [o.name for o in session.get_outputs() if o.name == INPUT_SUM]
    have = session.run([*outputs, *sums], _fed(session, segments[0].inputs, inputs))
    for name, got in zip(outputs, have):
        if want[name].shape != got.shape or not np.allclose(want[name], got, atol=atol, rtol=0):
            raise ExportError(
                f"{file.name} {name} differs from the chain's; expected every earlier body "
                f"and {segments[-1].file} joined to give what the chain gives"
            )
    if sums:
        _check_sum(file, float(have[-1]), inputs)


def _with_input_sum(tmp: Path, first: SegmentSpec, example) -> None:
    """Segment 0 and its body also give INPUT_SUM, the sum of the model's float inputs: the
    runtime refuses NaN and inf by reading it after the call, instead of a numpy pass over
    the inputs before it (~15 us on a cold call). Checked under ONNX Runtime."""
    inputs = [x.detach().numpy() for x in example]
    for graph in (first.file, *([first.body.file] if first.body else [])):
        path = tmp / graph
        model = with_input_sum(onnx.load(path))
        if not any(o.name == INPUT_SUM for o in model.graph.output):
            return  # no float input (token ids): nothing to refuse
        onnx.save(model, path)
        session = cpu_session(path, what=graph, error=ExportError)
        (total,) = session.run([INPUT_SUM], _fed(session, first.inputs, inputs))
        _check_sum(path, float(total), inputs)


def _check_sum(file: Path, total: float, inputs: Sequence[np.ndarray]) -> None:
    want = sum(float(x.sum(dtype=np.float64)) for x in inputs if x.dtype.kind == "f")
    if not np.isclose(total, want, rtol=1e-4, atol=1e-3):
        raise ExportError(f"{file.name} sums its inputs to {total}; expected {want}")


def _fed(session, names: Sequence[str], arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays by name, for the inputs the graph kept (an exporter drops unused ones;
    validation then names such a carry to the user)."""
    kept = {i.name for i in session.get_inputs()}
    return {n: a for n, a in zip(names, arrays) if n in kept}


def export_monolithic(
    model: nn.Module,
    example_inputs: object,
    path: str | os.PathLike,
    *,
    criterion: str = "confidence",
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    exporter: str = "auto",
) -> Path:
    """The whole network as ONE ONNX graph (the baseline the chained bundle is measured
    against): inputs as in the bundle, outputs ``logits_0..`` then ``score_0..``, dynamic batch.
    """
    inputs = to_tensors(example_inputs)
    names = resolve_input_names(inputs, input_names, model)
    steps = trace(model, inputs, criterion)
    outputs = [f"logits_{i}" for i in range(len(steps))] + [f"score_{i}" for i in range(len(steps))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(path, what="ONNX graph") as tmp:
        export_graph(
            WholeGraph(model, criterion),
            _at_least_two(inputs),
            tmp,
            names,
            outputs,
            opset=opset or DEFAULT_OPSET,
            max_opset=None if opset else MAX_OPSET,
            exporter=exporter,
        )
    return path


def _output_extra(output: torch.Tensor, kind: str) -> dict:
    """What the manifest records about every exit's output: its classes, or its shape."""
    if kind == "logits":
        return {"num_classes": int(output.shape[-1])}
    if kind == "tokens":  # finished tokens are dropped: later segments never see them
        return {"num_classes": int(output.shape[-1]), "tokens": int(output.shape[1]),
                "finished_tokens": "dropped"}  # fmt: skip
    return {"output_shape": [BATCH_DIM, *(int(d) for d in output.shape[1:])]}


def trace(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], criterion: str, output: str = "logits"
) -> list[ExitStep]:
    """Run the model in eval mode on ``inputs``, check the contract and the criterion
    (``output``: what every exit gives, "logits" or "tensor")."""
    check_contract(model)
    model.eval()
    try:
        with torch.no_grad():
            steps = run_exits(model, inputs, output)
    except ModelContractError:
        raise
    except Exception as err:  # (a model raises anything on inputs it cannot take)
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        line = first_line(err)
        raise InputError(f"inputs of shape {shapes} do not fit the model: {line}") from err
    problem = CRITERIA[criterion].output_problem(output)
    if problem:
        raise ModelContractError(problem)
    if output == "tokens":
        _check_token_steps(steps)
    elif output == "tensor":  # each sample gets the output of the exit it took: one shape
        shapes = {tuple(s.logits.shape[1:]) for s in steps}
        if len(shapes) != 1:
            raise ModelContractError(
                f"exits return outputs of different shapes {sorted(shapes)} (batch apart); "
                "expected the same at every exit"
            )
    else:
        classes = {int(s.logits.shape[-1]) for s in steps}
        if len(classes) != 1:
            raise ModelContractError(
                f"exits return different numbers of classes {sorted(classes)}; expected the same"
            )
    for i, s in enumerate(steps):
        classes_here = None if output == "tensor" else int(s.logits.shape[-1])
        check_criterion(criterion, classes_here, s.gate is not None, f"exits[{i}]")
    return steps


def _check_token_steps(steps: list[ExitStep]) -> None:
    """Per-token exits: every exit gives [batch, tokens, classes] for the same tokens and
    classes, and every carry tensor has the token axis second (it is compacted there)."""
    tokens = int(steps[0].logits.shape[1])
    shapes = {tuple(s.logits.shape[1:]) for s in steps}
    if len(shapes) != 1:
        raise ModelContractError(
            f"exits return per-token logits of different shapes {sorted(shapes)}; expected "
            "the same tokens and classes at every exit"
        )
    for i, s in enumerate(steps[:-1]):
        for k, c in enumerate(s.carry_out):
            if c.dim() < 2 or int(c.shape[1]) != tokens:
                raise ModelContractError(
                    f"segments[{i}] carry {k} has shape {tuple(c.shape)}; per-token exits "
                    f"compact the token axis, so every carry tensor needs the {tokens} tokens "
                    "on axis 1"
                )


def numpy_dtype(x: torch.Tensor) -> str:
    return str(torch.empty(0, dtype=x.dtype).numpy().dtype)


def _at_least_two(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    # A batch of 1 lets exporters bake the batch size into reshapes; trace with 2 or more.
    if tensors[0].shape[0] >= 2:
        return tuple(tensors)
    return tuple(torch.cat([x, x]) for x in tensors)


def _initial_thresholds(options: ExportOptions, num_exits: int) -> tuple[float, ...]:
    criterion = CRITERIA[options.criterion]
    return criterion.initial_thresholds(_criterion_params(options), num_exits)


def _compile_for_target(bundle_dir: Path, options: ExportOptions):
    """The validated fp32 bundle in the target's precision (edgeexit.compile.compiler)."""
    if options.target is None:
        return None
    return compile_exported(
        bundle_dir,
        options.target,
        calib_data=options.calib_data,
        max_quant_drop=options.max_quant_drop,
    )


def _criterion_params(options: ExportOptions) -> dict:
    return CRITERIA[options.criterion].params(options.criterion_params)


@dataclass(frozen=True)
class _TargetLimits:
    name: str | None
    opset: int
    max_ir_version: int | None
    max_opset: int = MAX_OPSET  # what an exporter needing more than `opset` may go up to
    opset_fixed: bool = False  # the user chose the opset: never raise it


def _resolve_target(options: ExportOptions) -> _TargetLimits:
    fixed = options.opset is not None
    if options.target is None:
        return _TargetLimits(None, options.opset or DEFAULT_OPSET, None, opset_fixed=fixed)
    target = load_target(options.target)
    if options.opset is not None and options.opset > target.max_opset:
        raise ExportError(
            f"opset {options.opset} is above target {target.name}'s max_opset "
            f"{target.max_opset}; expected `opset` <= {target.max_opset}"
        )
    opset = options.opset or min(DEFAULT_OPSET, target.max_opset)
    return _TargetLimits(target.name, opset, target.max_ir_version, target.max_opset, fixed)
