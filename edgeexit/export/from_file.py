"""Export straight from a model file: what ``edgeexit export MODEL.pt`` does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from edgeexit.bundle import check_bundle_output
from edgeexit.errors import InputError
from edgeexit.export.bundle_export import ExportResult, export_bundle
from edgeexit.export.checkpoint import load
from edgeexit.export.inputs import InputShape, example_tensors
from edgeexit.export.options import ExportOptions
from edgeexit.progress import Progress


def export_file(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ExportOptions,
    *,
    input_shapes: Sequence[InputShape] = (),
    trust_pickle: bool = False,
    factory: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Load ``model_path`` (see ``checkpoint.load``, which takes ``trust_pickle`` and
    ``factory``) and export it to ``out_dir``.

    ``input_shapes`` replace the checkpoint's example inputs; a trusted pickled module has
    none, so it needs them. ``progress`` follows the export stage by stage.
    """
    sources = (model_path, *([options.calib_data] if options.calib_data else []))
    check_bundle_output(out_dir, inputs=sources)  # before loading: refuse early
    if progress is not None:
        progress("loading the model", 0, 0)
    ckpt = load(model_path, trust_pickle=trust_pickle, factory=factory)
    if input_shapes:
        inputs = example_tensors(input_shapes)
        names = _names(input_shapes, ckpt.input_names)
    elif ckpt.example_inputs is not None:
        inputs, names = ckpt.example_inputs, ckpt.input_names
    else:
        raise InputError(
            f"{model_path} is a pickled module without an input spec; pass `input_shape` "
            "with the per-sample dims, e.g. 1x8x8"
        )
    if options.input_names is None:
        options = replace(options, input_names=names)
    return export_bundle(
        ckpt.model, inputs, out_dir, options, sources=(model_path,), progress=progress
    )


def _names(shapes: Sequence[InputShape], saved: tuple[str, ...] | None) -> tuple[str, ...] | None:
    given = [s.name for s in shapes]
    if all(given):
        return tuple(given)
    if any(given):
        raise InputError("name every `input_shape` (NAME=DIMS) or none of them")
    return saved if saved is not None and len(saved) == len(shapes) else None
