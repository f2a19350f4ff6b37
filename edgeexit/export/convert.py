"""Turn one flat-tensor torch module into one ONNX file with a dynamic batch axis.

The TorchScript exporter is tried first because it is ~10x faster on small graphs; the
dynamo exporter takes over where TorchScript cannot trace a module (with torch 2.13 it fails
on ``nn.MultiheadAttention`` in eval mode, ``aten::_native_multi_head_attention``). The
result is simplified with onnxsim, its carry inputs anchored in ONNX Runtime's blocked
layout where a residual skip reads them (``nchwc.py``), and its IR version capped for the
target.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from edgeexit.bundle import BATCH_DIM
from edgeexit.errors import ExportError, first_line
from edgeexit.export.nchwc import anchor_blocked_inputs

EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMO_MIN_OPSET = 18
# What onnxsim's constant folding prints for a node it could not fold (it folds nodes in
# batches, bisects a batch that fails, and gives up on a node alone): the node stays in the
# graph as exported, and a later round often folds it after all (BERT's token type and
# position lookups: "no initializer .../Where_output_0"). Nothing is wrong; the graph is
# checked by onnxsim and validated against torch.
_FOLD_SKIPPED = re.compile(r'^WARNING: failed to run "[\w.]+" op \(name is ".*"\), skip\.\.\.')


def export_graph(
    module: nn.Module,
    args: Sequence[torch.Tensor],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    opset: int,
    max_opset: int | None = None,
    exporter: str = "auto",
    simplify: bool = True,
    max_ir_version: int | None = None,
    axes: dict[str, dict[int, str]] | None = None,
) -> tuple[str, int]:
    """Export ``module(*args)`` to ``path``; return the exporter that succeeded and the
    opset it wrote.

    ``max_opset``: when set, an exporter that needs a higher opset than ``opset`` (dynamo
    needs 18) may raise it up to this; None keeps ``opset`` (the user chose it).
    ``axes``: the dynamic axes of each named input and output (TorchScript's form); by
    default axis 0 of every one, the batch.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    # A fresh wrapper module is in training mode, and the exporters restore that mode on
    # exit, which would flip the user's (shared) submodules to training: export in eval.
    module.eval()
    order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    failures = []
    for name in order:
        used = opset
        if name == "dynamo" and opset < DYNAMO_MIN_OPSET and (max_opset or 0) >= DYNAMO_MIN_OPSET:
            used = DYNAMO_MIN_OPSET
        try:
            run = _torchscript if name == "torchscript" else _dynamo
            with _quiet():
                run(module, tuple(args), path, list(input_names), list(output_names), used, axes)
        except Exception as err:  # (torch raises many types; all mean "failed")
            failures.append(f"{name}: {first_line(err)}")
            continue
        _finish(path, simplify, max_ir_version)
        return name, used
    raise ExportError("ONNX export failed (" + "; ".join(failures) + ")")


def _torchscript(module, args, path, input_names, output_names, opset, axes) -> None:
    axes = axes or {n: {0: BATCH_DIM} for n in (*input_names, *output_names)}
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=axes,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def _dynamo(module, args, path, input_names, output_names, opset, axes) -> None:
    if axes is not None:
        raise ExportError("the dynamo exporter here takes the batch axis only")
    if opset < DYNAMO_MIN_OPSET:
        raise ExportError(f"the dynamo exporter needs opset >= {DYNAMO_MIN_OPSET}, got {opset}")
    batch = torch.export.Dim(BATCH_DIM, min=1)
    # dynamic_shapes mirrors forward(self, *xs): a 1-tuple holding one dict per input.
    shapes = (tuple({0: batch} for _ in args),)
    program = torch.onnx.export(
        module,
        args,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=shapes,
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    program.save(str(path))


def _finish(path: Path, simplify: bool, max_ir_version: int | None) -> None:
    model = tidy_graph(onnx.load(str(path)), simplify)
    anchor_blocked_inputs(model)
    if max_ir_version is not None and model.ir_version > max_ir_version:
        model.ir_version = max_ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tidy_graph(model: onnx.ModelProto, simplify: bool) -> onnx.ModelProto:
    """``model`` simplified by onnxsim (constants folded, repeated work merged) if asked,
    and without its recorded intermediate shapes. ExportError when onnxsim fails or its own
    check of the result does.

    The shapes the exporters and onnxsim record name unknown sizes ("unk__13") that ONNX
    Runtime then plans with: the same graph without them, shapes inferred by ONNX Runtime
    itself, ran the heavy-head transformer of benchmarks/disabled_exits.py 8 % faster on
    this machine, and the digits ResNet as fast. (With them ONNX Runtime fused that
    transformer's Add + LayerNormalization pairs into SkipLayerNormalization; without, not.)
    """
    if simplify:
        model = _simplify(model)
    del model.graph.value_info[:]
    return model


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    try:
        with without_fold_skips():
            simplified, ok = onnxsim.simplify(model)
    except Exception as err:  # (onnxsim raises bare RuntimeErrors and more)
        raise ExportError(f"onnxsim could not simplify the graph: {first_line(err)}") from err
    if not ok:
        raise ExportError("onnxsim's check of the simplified graph failed")
    return simplified


@contextlib.contextmanager
def without_fold_skips():
    """Every line written to the process's stderr meanwhile is written on, but for onnxsim's
    ``failed to run ... skip`` (``_FOLD_SKIPPED``), which its C++ code writes to file
    descriptor 2 (where ``contextlib.redirect_stderr`` does not reach)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to filter
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _FOLD_SKIPPED.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress chatter and deprecation warnings; errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
