"""Cross-compile a validated fp32 bundle for a device target.

For each segment: pin the ONNX IR version and opset to the target's, change precision (int8
static QDQ for ARM CPUs, fp16 for CUDA), check every exit's accuracy against fp32 on the
calibration data, and write the new bundle atomically, with its precision and the accuracy
report in the manifest. Nothing is written when an exit loses more than the allowed drop.

No offline graph optimization is applied: ORT_ENABLE_ALL bakes x86-only NCHWc nodes into a
saved model, so the device's own ONNX Runtime optimizes at load. Host-side: imports onnx.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.budget import drop_from_points
from edgeexit.bundle import (
    GraphFile,
    Manifest,
    atomic_bundle_dir,
    check_bundle_output,
    read_manifest,
    verify_segments,
    write_manifest,
)
from edgeexit.compile import precision as prec
from edgeexit.compile.host_chain import host_sessions, run_chain
from edgeexit.compile.ortformat import save_ort_format
from edgeexit.compile.report import CompileReport, ExitAccuracy
from edgeexit.compile.versions import default_opset, pin_versions
from edgeexit.data import Dataset, load_data
from edgeexit.errors import EdgeExitError, PrecisionLossError, TargetError
from edgeexit.runtime.inputs import check_inputs
from edgeexit.runtime.session import ORT_ERRORS
from edgeexit.targets.spec import Target, host_arch, load_target

# Domains only an x86 ORT build (or only the optimizer that wrote them) can load.
HOST_ONLY_DOMAINS = ("com.microsoft.nchwc",)


@dataclass(frozen=True)
class CompileOptions:
    """How a bundle is compiled; travels from the CLI to here in one piece."""

    max_quant_drop: float = 0.01  # most accuracy an exit may lose, a fraction (0.01: 1 pp)
    calib_samples: int = 512  # calibration samples used (the first N of the data)
    batch_size: int = 64
    threads: int = 0  # host evaluation threads; 0: ONNX Runtime's default
    ort_format: bool = False  # segments as .ort files, for minimal ONNX Runtime builds
    # exits that give images or other tensors: the most an exit's mean PSNR against the
    # calibration data's targets may fall, dB (their check has no accuracy to lose)
    max_quant_psnr_drop: float = 0.5
    max_quant_drop_pp: float | None = None  # deprecated: max_quant_drop in percentage points

    def __post_init__(self) -> None:
        if self.max_quant_drop_pp is not None:
            drop = drop_from_points(self.max_quant_drop_pp, "CompileOptions")
            object.__setattr__(self, "max_quant_drop", drop)
            object.__setattr__(self, "max_quant_drop_pp", None)
        if not 0 <= self.max_quant_drop <= 1:
            raise TargetError(
                f"`max_quant_drop` is {self.max_quant_drop:g}; expected a fraction in [0, 1], "
                "e.g. 0.01 for 1 pp"
            )
        if self.calib_samples < 1 or self.batch_size < 1 or self.threads < 0:
            raise TargetError(f"calibration sizes must be positive, got {self}")


@dataclass(frozen=True)
class _Compiled:
    manifest: Manifest
    models: list[Any]
    report: CompileReport
    bodies: list[Any]  # each segment's compiled body, or None (none, or it did not match)
    # per segment, the compiled bodies before it and its compiled segment as one graph
    # (the last segment's plain graph, the others' prefix), or None
    joined: tuple[Any, ...] = ()


def compile_bundle(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    target: Target | str,
    *,
    calib: Dataset | str | os.PathLike | None = None,
    options: CompileOptions = CompileOptions(),
) -> CompileReport:
    """Write ``dst_dir``: the fp32 bundle ``src_dir`` compiled for ``target``.

    ``calib``: calibration data for int8 and the accuracy check, a ``.npz`` path (``x`` or
    one array per input, optional labels ``y``) or a loaded ``edgeexit.data.Dataset``.
    ``dst_dir`` must be new, empty or a bundle, and neither ``src_dir`` nor the calibration
    data file, nor a folder holding either (files.check_output).
    """
    sources = (src_dir,) if calib is None or isinstance(calib, Dataset) else (src_dir, calib)
    check_bundle_output(dst_dir, inputs=sources)
    name = "calibration data" if calib is None or isinstance(calib, Dataset) else str(calib)
    if calib is not None and not isinstance(calib, Dataset):
        calib = load_calibration(calib, read_manifest(src_dir))
    compiled = _compile(src_dir, target, calib, options, calib_name=name)
    with atomic_bundle_dir(dst_dir, inputs=sources) as tmp:
        _write_into(tmp, compiled, ort_format=options.ort_format)
    return compiled.report


def compile_in_place(
    bundle_dir: Path,
    target: Target | str,
    calib: Dataset | None,
    options: CompileOptions,
    calib_name: str = "calibration data",
) -> CompileReport:
    """Compile the fp32 bundle in ``bundle_dir`` into itself: for export, inside the
    temporary folder it has just validated (which replaces the output only once done)."""
    compiled = _compile(bundle_dir, target, calib, options, calib_name=calib_name)
    for seg in compiled.manifest.segments:
        (bundle_dir / seg.file).unlink()
        for graph in seg.other_graphs:  # written again, compiled, where it still matches
            (bundle_dir / graph.file).unlink()
    _write_into(bundle_dir, compiled, ort_format=options.ort_format)
    return compiled.report


def _compile(
    src_dir: str | os.PathLike,
    target: Target | str,
    calib: Dataset | None,
    options: CompileOptions,
    *,
    calib_name: str = "calibration data",  # how errors name the data: its file, if any
) -> _Compiled:
    import onnx

    from edgeexit.compile.plain_graph import with_input_sum, without_input_sum

    target = load_target(target)
    manifest = read_manifest(src_dir)
    if manifest.output == "tokens":
        raise TargetError(
            f"{src_dir}'s exits give tokens, not one class per sample: compile's check of "
            "every exit compares per-sample predictions, so it cannot tell what fp16 or "
            "int8 costs them yet; deploy the fp32 bundle"
        )
    source_precision = manifest.extra.get("precision", "fp32")
    if source_precision != "fp32":
        raise TargetError(f"{src_dir} is already {source_precision}; compile from an fp32 bundle")
    paths = verify_segments(src_dir, manifest)
    models = [onnx.load(p) for p in paths]
    models[0] = without_input_sum(models[0])  # converted without it, then given it again
    for model, seg in zip(models, manifest.segments):
        _refuse_host_only_ops(model, target, seg.file)
    fp32 = [pin_versions(m, target, name=s.file) for m, s in zip(models, manifest.segments)]
    if calib is not None:
        check_inputs(calib.inputs, manifest.inputs)  # InputError naming the mismatch
        calib = calib.take(slice(0, options.calib_samples))
        num_classes = manifest.extra.get("num_classes")
        if isinstance(num_classes, int):
            calib.check_labels(num_classes, calib_name)
    tensors = manifest.output == "tensor"
    # refused before converting (an int8 quantization of every segment), not after
    if tensors and target.precision != "fp32" and (calib is None or calib.labels is None):
        raise TargetError(
            f"{target.precision} changes what exits that give tensors output, and only a PSNR "
            "against target tensors can say by how much: pass `calib_data` with the inputs "
            "and their targets 'y' (e.g. the clean images)"
        )
    compiled, method, convert = _change_precision(fp32, manifest, target, calib, options)
    bodies = _compiled_bodies(src_dir, manifest, target, convert, compiled, calib)
    kernels = _evaluation_kernels(target)
    report = CompileReport(
        target=target.name,
        precision=target.precision,
        method=method,
        ir_version=max(m.ir_version for m in compiled),
        opset=max(default_opset(m) for m in compiled),
        kernels=kernels if compiled is not fp32 else "",
        **_accuracy(fp32, compiled, manifest, calib, options, kernels),
    )
    if tensors:
        failing = [e for e in report.exits if e.drop > options.max_quant_psnr_drop]
        if failing:
            raise PrecisionLossError(
                f"{target.precision} bundle for {target.name} loses too much PSNR: "
                + "; ".join(
                    f"exit {e.exit_index} {e.reference_accuracy:.2f} -> "
                    f"{e.compiled_accuracy:.2f} dB"
                    for e in failing
                )
                + f" (at most {options.max_quant_psnr_drop:g} dB); nothing written",
                report=report,
            )
    failing = [] if tensors else [e for e in report.exits if e.drop > options.max_quant_drop]
    if failing:
        raise PrecisionLossError(
            f"{target.precision} bundle for {target.name} loses too much accuracy: "
            + "; ".join(
                f"exit {e.exit_index} {e.reference_accuracy:.1%} -> {e.compiled_accuracy:.1%}"
                for e in failing
            )
            + f" (`max_quant_drop` {100 * options.max_quant_drop:g} pp); nothing written",
            report=report,
        )
    # after conversion: the sum stays float32, and reads the inputs as they come
    compiled[0] = with_input_sum(compiled[0])
    if bodies[0] is not None:
        bodies[0] = with_input_sum(bodies[0])
    joined = _compiled_joined(manifest, compiled, bodies)
    return _Compiled(manifest, compiled, report, bodies, tuple(joined))


def _compiled_joined(manifest: Manifest, compiled: list[Any], bodies: list[Any]) -> list[Any]:
    """Per segment, its joined graph compiled: the compiled bodies before it and its
    compiled segment as one graph (the last segment's plain graph, another's prefix), where
    the source bundle has one and every compiled body before it was kept (they were checked
    against their segments; joining adds no numerics), else None. An fp32 joined graph is
    never kept in a converted bundle: it is made again from the converted graphs or left out."""
    from edgeexit.compile.plain_graph import CannotJoin, join_graphs, joined_outputs, with_input_sum

    joined: list[Any] = []
    for k, seg in enumerate(manifest.segments):
        last = k == manifest.num_exits - 1
        source = seg.plain if last else seg.prefix
        if source is None or any(b is None for b in bodies[:k]):
            joined.append(None)
            continue
        try:
            graph = join_graphs([*bodies[:k], compiled[k]], outputs=joined_outputs(seg, last))
        except CannotJoin:
            joined.append(None)
            continue
        joined.append(with_input_sum(graph))  # after conversion: the sum stays float32
    return joined


# A compiled body must hand on what its compiled segment does: the same block, converted
# the same way, on the same data. Anything further apart than this is another carry.
BODY_ATOL = 1e-5


def _compiled_bodies(
    src_dir, manifest: Manifest, target: Target, convert, compiled: list[Any], calib
) -> list[Any]:
    """Each segment's body converted as its segment was, kept where it hands on the
    compiled segment's carry (checked on the calibration inputs, else on a zero batch);
    None where there is no body or it does not match (that exit's head then runs)."""
    import onnx

    from edgeexit.compile.plain_graph import without_input_sum

    specs = [s.headless for s in manifest.segments]
    if not any(specs):
        return [None] * len(specs)
    paths = iter(verify_segments(src_dir, replace(manifest, segments=tuple(s for s in specs if s))))
    inputs = calib.inputs if calib is not None else [
        np.zeros((2, *i.shape[1:]), dtype=np.dtype(i.dtype)) for i in manifest.inputs
    ]  # fmt: skip
    try:
        sessions = host_sessions(compiled, threads=1)
        feeds = run_chain(sessions, manifest, [x[:64] for x in inputs]).feeds
    except (*ORT_ERRORS, EdgeExitError):  # this host cannot run them: no body is checked
        return [None] * len(specs)
    bodies = []
    for i, spec in enumerate(specs):
        if spec is None:
            bodies.append(None)
            continue
        body = without_input_sum(onnx.load(next(paths)))
        body = convert(pin_versions(body, target, name=spec.file), i)
        body = pin_versions(body, target, name=spec.file)
        carry = list(spec.carry)
        try:  # a graph this host cannot run (fp16 kernels it lacks) is not checked: dropped
            fused, alone = host_sessions([compiled[i], body], threads=1)
            same = all(
                np.allclose(a, b, atol=BODY_ATOL, rtol=0)
                for feed in feeds[i]
                for a, b in zip(fused.run(carry, feed), alone.run(carry, feed))
            )
        except (*ORT_ERRORS, EdgeExitError):
            same = False
        bodies.append(body if same else None)
    return bodies


# How the compiled segments are run for the accuracy check (CompileReport.kernels).
HOST_KERNELS = "this host's kernels"
SIMULATED_KERNELS = "quantized numerics simulated in fp32"


def _evaluation_kernels(target: Target) -> str:
    """Int8 for another architecture is checked with its quantization simulated in fp32
    (QDQ nodes left unfused), not with this host's int8 kernels: those differ between CPUs
    (x86 AVX2 kernels saturate where ARM's do not), and the device runs its own."""
    if target.precision == "int8" and target.arch != host_arch():
        return SIMULATED_KERNELS
    return HOST_KERNELS


def _refuse_host_only_ops(model: Any, target: Target, name: str) -> None:
    domains = {node.domain for node in model.graph.node} & set(HOST_ONLY_DOMAINS)
    if domains and target.arch != host_arch():
        raise TargetError(
            f"{name} holds {sorted(domains)[0]} nodes from an offline ORT_ENABLE_ALL "
            f"optimization, which only x86 builds load; re-export without offline "
            f"optimization for {target.name}"
        )


def _change_precision(
    fp32: list[Any],
    manifest: Manifest,
    target: Target,
    calib: Dataset | None,
    options: CompileOptions,
) -> tuple[list[Any], str, Callable[[Any, int], Any]]:
    """The segments in the target's precision, how they were made, and the conversion
    itself (``convert(model, i)``: any graph that takes segment i's inputs, made alike)."""
    if target.precision == "fp32":
        return fp32, "none", lambda model, i: model
    if target.precision == "fp16":
        method = "fp16"

        def convert(model: Any, i: int) -> Any:
            return prec.convert_fp16(model)

    elif calib is not None:
        sessions = host_sessions(fp32, threads=options.threads)
        feeds = run_chain(sessions, manifest, calib.inputs, batch_size=options.batch_size).feeds
        method = "int8-static-qdq"

        def convert(model: Any, i: int) -> Any:
            return prec.quantize_int8_static(model, feeds[i])

    elif any(prec.has_op(m, prec.STATIC_INT8_OPS[:2]) for m in fp32):
        raise TargetError(
            f"int8 for {target.name} needs calibration data (`calib_data`, a .npz): this model "
            "has convolutions, and dynamic quantization would turn them into ConvInteger, "
            "which many ARM builds of ONNX Runtime lack"
        )
    else:
        method = "int8-dynamic-matmul"

        def convert(model: Any, i: int) -> Any:
            return prec.quantize_int8_dynamic(model)

    converted = [convert(m, i) for i, m in enumerate(fp32)]
    # Quantizers may raise the opset (QDQ per-channel needs 13); check the limits again.
    pinned = [pin_versions(m, target, name=s.file) for m, s in zip(converted, manifest.segments)]
    return pinned, method, convert


def _accuracy(
    fp32: list[Any],
    compiled: list[Any],
    manifest: Manifest,
    calib: Dataset | None,
    options: CompileOptions,
    kernels: str,
) -> dict[str, Any]:
    """Every exit's accuracy, fp32 vs compiled, on the calibration data (if any)."""
    if calib is None or compiled is fp32:
        return {"reference": "none", "samples": 0, "exits": ()}
    level = "basic" if kernels == SIMULATED_KERNELS else "all"
    run = [
        run_chain(
            host_sessions(models, threads=options.threads, optimization=level),
            manifest,
            calib.inputs,
            batch_size=options.batch_size,
        )
        for models in (fp32, compiled)
    ]
    ref, out = run
    if manifest.output == "tensor":  # each exit's mean PSNR against the targets
        from edgeexit.measure.quality import per_sample_quality

        def psnr(outputs: list[np.ndarray]) -> np.ndarray:
            return per_sample_quality(np.stack(outputs), calib.labels, "psnr").mean(axis=1)

        before, after = psnr(ref.logits), psnr(out.logits)
        exits = tuple(
            ExitAccuracy(
                i, float(b), float(a), float(np.mean(np.abs(ref.scores[i] - out.scores[i])))
            )
            for i, (b, a) in enumerate(zip(before, after))
        )
        return {"reference": "PSNR dB against targets", "samples": len(calib), "exits": exits}
    # Without labels, agreement with the fp32 prediction is the accuracy measure.
    labels = calib.labels
    reference = "labels" if labels is not None else "fp32 predictions"
    exits = []
    for i, (ref_logits, out_logits) in enumerate(zip(ref.logits, out.logits)):
        truth = labels if labels is not None else ref_logits.argmax(1)
        exits.append(
            ExitAccuracy(
                exit_index=i,
                reference_accuracy=float(np.mean(ref_logits.argmax(1) == truth)),
                compiled_accuracy=float(np.mean(out_logits.argmax(1) == truth)),
                mean_score_shift=float(np.mean(np.abs(ref.scores[i] - out.scores[i]))),
            )
        )
    return {"reference": reference, "samples": len(calib), "exits": tuple(exits)}


def _write_into(folder: Path, compiled: _Compiled, *, ort_format: bool) -> None:
    import onnx

    from edgeexit.compile.shared_weights import store_once

    report = compiled.report

    def written(model: Any, file: str) -> str:
        path = (folder / file).with_suffix(".onnx")
        onnx.save(model, path)  # weights inline: the old shared file may not fit them
        return (save_ort_format(path) if ort_format else path).name

    segments = []
    last = compiled.manifest.segments[-1]
    for model, body, joined, seg in zip(
        compiled.models, compiled.bodies, compiled.joined, compiled.manifest.segments
    ):
        body_file = None if body is None else GraphFile(written(body, seg.body.file), "")
        # the last segment's joined graph is its plain graph, another's its prefix
        # (_compiled_joined): a plain graph the source names on another segment is left out
        source = seg.plain if seg is last else seg.prefix
        graph = None if joined is None else GraphFile(written(joined, source.file), "")
        segments.append(replace(seg, file=written(model, seg.file), body=body_file,
                                plain=graph if seg is last else None,
                                prefix=None if seg is last else graph))  # fmt: skip
    # weights the compiled graphs still have in common (a shared layer quantized alike, a
    # segment and its body), stored once again; the ORT format reads no external data, so
    # its files share nothing (and a stale shared file goes)
    segments, _ = store_once(folder, segments)
    manifest = replace(compiled.manifest, segments=tuple(segments)).with_extra(
        precision=report.precision,
        target=report.target,
        opset=report.opset,
        ir_version=report.ir_version,
        compile=report.to_json(),
    )
    write_manifest(folder, manifest)


def load_calibration(path: str | os.PathLike, manifest: Manifest) -> Dataset:
    """A calibration data file for ``manifest``: labels, or, for exits that give tensors,
    the target tensors 'y' (shaped like an exit's output)."""
    if manifest.output == "tensor":
        shape = tuple(int(d) for d in manifest.extra["output_shape"][1:])
        return load_data(path, manifest.inputs, targets=shape)
    return load_data(path, manifest.inputs)


def compile_exported(
    bundle_dir: str | os.PathLike,
    target: Target | str,
    *,
    calib_data: str | os.PathLike | None = None,
    max_quant_drop: float = 0.01,
) -> CompileReport:
    """The hook ``export --target`` calls: compile the fp32 bundle it has just validated, in
    place (inside export's own temporary directory), loading the calibration data file."""
    calib = load_calibration(calib_data, read_manifest(bundle_dir)) if calib_data else None
    options = CompileOptions(max_quant_drop=max_quant_drop)
    name = str(calib_data) if calib_data else "calibration data"
    return compile_in_place(Path(bundle_dir), target, calib, options, name)
