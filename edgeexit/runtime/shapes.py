"""What every segment output looks like, learned once at load by a probe run.

The manifest names the outputs but not their shapes (ONNX often leaves them symbolic). One
run of the chain at batch 2 on zeros gives each output's per-row shape and dtype, which
lets the runtime allocate its buffers once and bind them before any real call. It also
checks the contract the runtime relies on: every output has the batch on axis 0, logits
are ``[batch, classes]`` with the same classes at every exit, the score is ``[batch]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edgeexit.bundle import INPUT_SUM, Manifest, SegmentSource, SegmentSpec
from edgeexit.errors import BundleError, first_line, quoted
from edgeexit.onnxproto import ProtoError, output_names
from edgeexit.runtime.session import ORT_ERRORS

PROBE_BATCH = 2


@dataclass(frozen=True)
class Layout:
    """One tensor's shape without its batch axis, and its dtype."""

    row_shape: tuple[int, ...]
    dtype: np.dtype

    def empty(self, rows: int) -> np.ndarray:
        return np.empty((rows, *self.row_shape), dtype=self.dtype)


def outputs(spec: SegmentSpec) -> list[str]:
    """The outputs a segment's graph gives: its carry, then its exit's logits and score,
    which a body (the block without its head, ``SegmentSpec.headless``) has not, and a
    plain graph's last exit gives no score (``SegmentSpec.as_plain``: it takes everyone)."""
    heads = (spec.logits, spec.score) if spec.has_head else ()
    return list(dict.fromkeys((*spec.carry, *(name for name in heads if name))))


def check_output_names(spec: SegmentSpec, source: SegmentSource) -> None:
    """The outputs the manifest names are in a segment's ONNX graph (read from its bytes,
    for a segment not opened yet); an ORT-format file is checked when it is opened."""
    if not spec.file.endswith(".onnx"):
        return
    try:
        data = source.model if source.model is not None else source.path.read_bytes()
        have = set(output_names(data))
    except (OSError, ProtoError) as err:
        raise BundleError(f"{spec.file} is unreadable: {err}") from err
    _require_outputs(spec, have)


def _require_outputs(spec: SegmentSpec, have: set[str]) -> None:
    for name in outputs(spec):
        if name not in have:
            raise BundleError(
                f"{spec.file} has no output {quoted(name)}, which the manifest names; its "
                f"outputs are {quoted(sorted(have))}"
            )


def _check_names(spec: SegmentSpec, session: ort.InferenceSession) -> None:
    have_in = [i.name for i in session.get_inputs()]
    if sorted(have_in) != sorted(spec.inputs):
        raise BundleError(
            f"{spec.file} takes inputs {have_in}; the manifest says {list(spec.inputs)}"
        )
    _require_outputs(spec, {o.name for o in session.get_outputs()})


def _check_input_shapes(manifest: Manifest, session: ort.InferenceSession) -> None:
    """The model inputs' sizes in the manifest are the ones the chain's first graph
    declares (where it fixes them), checked before a probe batch of them is allocated: a
    manifest that claims larger inputs than its graph takes allocates nothing."""
    declared = {i.name: i.shape for i in session.get_inputs()}
    for spec in manifest.inputs:
        shape = declared.get(spec.name)
        if not isinstance(shape, list):
            continue  # an input the graph lacks: _check_names names it
        fixed = [(g, m) for g, m in zip(shape[1:], spec.shape[1:]) if isinstance(g, int)]
        if len(shape) != len(spec.shape) or any(g != m for g, m in fixed):
            raise BundleError(
                f"manifest input {spec.name!r} has shape {quoted(list(spec.shape))}, but "
                f"{manifest.segments[0].file} takes {quoted(shape)}; re-export the bundle"
            )


def _layout(spec: SegmentSpec, name: str, value: np.ndarray) -> Layout:
    if value.ndim == 0 or value.shape[0] != PROBE_BATCH:
        raise BundleError(
            f"{spec.file} output {name!r} has shape {value.shape} for a batch of "
            f"{PROBE_BATCH}; expected the batch on axis 0"
        )
    return Layout(tuple(value.shape[1:]), value.dtype)


def probe_layouts(
    manifest: Manifest, sessions: list[ort.InferenceSession]
) -> list[dict[str, Layout]]:
    """Run the chain once at batch 2 on zeros; return each segment's output layouts."""
    for spec in manifest.inputs:
        if spec.shape[:1] != ("batch",) or not all(isinstance(d, int) for d in spec.shape[1:]):
            raise BundleError(
                f"manifest input {spec.name!r} has shape {list(spec.shape)}; expected "
                "'batch' first and fixed sizes after it"
            )
    _check_input_shapes(manifest, sessions[0])
    feeds = {
        s.name: np.zeros((PROBE_BATCH, *s.shape[1:]), dtype=np.dtype(s.dtype))
        for s in manifest.inputs
    }
    layouts = []
    for spec, session in zip(manifest.segments, sessions):
        _check_names(spec, session)
        names = outputs(spec)
        try:
            values = session.run(names, feeds)
        except ORT_ERRORS as err:
            raise BundleError(
                f"{spec.file} fails on a batch of {PROBE_BATCH}; expected a dynamic batch axis "
                f"({first_line(err)})"
            ) from err
        out = {n: _layout(spec, n, v) for n, v in zip(names, values)}
        layouts.append(out)
        if len(layouts) < manifest.num_exits:
            next_inputs = manifest.segments[len(layouts)].inputs
            feeds = dict(zip(next_inputs, values[: len(spec.carry)]))
        if not spec.has_head:  # a body: the block without its head
            continue
        if manifest.output == "logits" and len(out[spec.logits].row_shape) != 1:
            raise BundleError(f"{spec.file} logits {spec.logits!r} are not [batch, classes]")
        per_token = manifest.output == "tokens"  # a score per token: [batch, tokens]
        if spec.score and len(out[spec.score].row_shape) != int(per_token):
            want = "[batch, tokens]" if per_token else "[batch]"
            raise BundleError(f"{spec.file} score {spec.score!r} is not {want}")
    shapes = {lay[s.logits].row_shape for lay, s in zip(layouts, manifest.segments) if s.has_head}
    if len(shapes) != 1:
        what = "the number of classes" if manifest.output == "logits" else "their output shape"
        raise BundleError(f"exits disagree on {what}: {sorted(shapes)}")
    return layouts


def gives_input_sum(manifest: Manifest, session: ort.InferenceSession) -> bool:
    """True if the chain's first graph gives ``INPUT_SUM`` (a plain graph does) and it is
    what it claims: a float32 scalar that sums a probe batch and is NaN when an input
    holds NaN. The runtime refuses NaN and inf by that one number, so a graph giving a
    wrong one is a BundleError here, not NaN inputs answered later."""
    given = [o for o in session.get_outputs() if o.name == INPUT_SUM]
    if not given:
        return False
    file, out = manifest.segments[0].file, given[0]
    if out.type != "tensor(float)" or list(out.shape) != []:
        raise BundleError(
            f"{file} gives {INPUT_SUM} as {out.type} {list(out.shape)}; expected a float32 "
            "scalar, the sum of its float inputs"
        )
    feeds = {
        s.name: np.full((PROBE_BATCH, *s.shape[1:]), 0.5 if np.dtype(s.dtype).kind == "f" else 0,
                        dtype=np.dtype(s.dtype))
        for s in manifest.inputs
    }  # fmt: skip
    floats = [a for a in feeds.values() if a.dtype.kind == "f"]
    want = 0.5 * sum(a.size for a in floats)
    try:
        (total,) = session.run([INPUT_SUM], feeds)
        if floats:
            floats[0].flat[-1] = np.nan
        (poisoned,) = session.run([INPUT_SUM], feeds)
    except ORT_ERRORS as err:
        raise BundleError(f"{file} fails on a batch of {PROBE_BATCH}: {first_line(err)}") from err
    if not np.isclose(float(total), want, rtol=1e-5):
        raise BundleError(
            f"{file} gives {INPUT_SUM} = {float(total)} for inputs summing to {want}; "
            "expected the sum of its float inputs"
        )
    if floats and not np.isnan(poisoned):
        raise BundleError(
            f"{file} gives {INPUT_SUM} = {float(poisoned)} for an input holding NaN; "
            "expected NaN (the sum of its float inputs)"
        )
    return True
