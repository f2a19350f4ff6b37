"""What a decoder bundle's graphs must take and give, checked against its manifest when
they are opened, from ONNX Runtime's own view of each graph (no onnx import).

The caches and buffers are allocated from the manifest's sizes and bound by address, so a
graph that disagrees with them (another width, more layers, other heads) must be refused at
load with its name and the size in question, not met as a failed call mid-generation. A
size the graph leaves symbolic cannot disagree here; ONNX Runtime checks it against the
bound shape at every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from edgeexit.errors import BundleError
from edgeexit.generation.manifest import DecoderManifest

FLOAT, INT64, INT32 = "tensor(float)", "tensor(int64)", "tensor(int32)"
TOKENS, PAST = "T", "P"  # the axes that vary from call to call


@dataclass(frozen=True)
class Tensor:
    """One input or output a graph must have: its element type and shape (ints the
    manifest fixes; TOKENS or PAST for an axis that varies)."""

    name: str
    type: str
    shape: tuple[int | str, ...]


def segment_tensors(m: DecoderManifest, index: int) -> tuple[list[Tensor], list[Tensor]]:
    """Segment ``index``'s inputs and outputs (docs/bundle-format.md, decoder bundles)."""
    per_head = (m.kv_heads, m.head_dim)
    first = Tensor("input_ids", INT64, (1, TOKENS))
    inputs = [first if index == 0 else Tensor("hidden", FLOAT, (1, TOKENS, m.dim))]
    outputs = [Tensor("hidden_out", FLOAT, (1, TOKENS, m.dim))]
    if m.fused:  # one buffer per cache, read and written in place
        cache = (1, m.kv_heads, m.max_positions, m.head_dim)
        inputs += [Tensor("seqlens_k", INT32, (1,)), Tensor("total_sequence_length", INT32, ())]
        for j in range(m.segments[index].layers):
            inputs += [Tensor(f"past_{kind}_{j}", FLOAT, cache) for kind in ("key", "value")]
            outputs += [Tensor(f"present_{kind}_{j}", FLOAT, cache) for kind in ("key", "value")]
        return inputs, outputs
    for j in range(m.segments[index].layers):
        inputs += [
            Tensor(f"past_{kind}_{j}", FLOAT, (1, PAST, *per_head)) for kind in ("key", "value")
        ]
        outputs += [
            Tensor(f"{kind}_{j}", FLOAT, (1, TOKENS, *per_head)) for kind in ("key", "value")
        ]
    return inputs, outputs


def head_tensors(m: DecoderManifest) -> tuple[list[Tensor], list[Tensor]]:
    inputs = [Tensor("hidden", FLOAT, (1, TOKENS, m.dim))]
    outputs = [Tensor("logits", FLOAT, (1, TOKENS, m.vocab_size)),
               Tensor("confidence", FLOAT, (1, TOKENS))]  # fmt: skip
    return inputs, outputs


# The oldest ONNX Runtime whose CPU kernels run each form right, measured on x86 wheels:
# GroupQueryAttention exists for float32 from 1.18 but gave other tokens until 1.20 (no
# error), and MatMulNBits takes 8 bits from 1.22 (1.21 refuses the graph at load).
FUSED_ORT = (1, 20)
INT8_ORT = (1, 22)


def needed_onnxruntime(m: DecoderManifest) -> tuple[int, int] | None:
    """The oldest ONNX Runtime that runs ``m``'s graphs right (None: any edgeexit takes)."""
    if _int8(m):
        return INT8_ORT
    return FUSED_ORT if m.fused else None


def _int8(m: DecoderManifest) -> bool:
    return "int8" in (m.precision, m.draft.precision if m.draft else None)


def check_onnxruntime(m: DecoderManifest, version: str = ort.__version__) -> None:
    """Refuse, before any session opens, a bundle this ONNX Runtime would run wrong."""
    need = needed_onnxruntime(m)
    have = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
    if need is not None and have < need:
        form, other = (("int8 weights", "in fp32 or int4") if _int8(m)
                       else ("fused operators", "with `attention` plain"))  # fmt: skip
        raise BundleError(
            f"this bundle's {form} need onnxruntime >= {in_words(need)} (older ones refuse "
            f"them or compute other tokens); this machine has {version}: pip install -U "
            f"'onnxruntime>={in_words(need)}', or export the model {other}"
        )


def in_words(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def check_graphs(m: DecoderManifest, sessions: list[ort.InferenceSession]) -> None:
    """Every segment's and the head's inputs and outputs against the manifest (sessions in
    ``m.graphs`` order); BundleError names the first disagreement."""
    wanted = [segment_tensors(m, i) for i in range(m.num_exits)] + [head_tensors(m)]
    _check_each(m.graphs, sessions, wanted)


def check_draft_graphs(m: DecoderManifest, sessions: list[ort.InferenceSession]) -> None:
    """The draft's graphs (``m.draft.graphs`` order): each takes and gives what the segment
    or the head it copies does."""
    if m.draft is None:
        return
    wanted = [segment_tensors(m, i) for i in range(m.num_exits - 1)] + [head_tensors(m)]
    _check_each(m.draft.graphs, sessions, wanted)


def _check_each(graphs, sessions: list[ort.InferenceSession], wanted) -> None:
    for graph, session, (inputs, outputs) in zip(graphs, sessions, wanted):
        _check(graph.file, "input", session.get_inputs(), inputs, exact=True)
        _check(graph.file, "output", session.get_outputs(), outputs, exact=False)


def _check(file: str, kind: str, have: list, want: list[Tensor], *, exact: bool) -> None:
    """``exact``: the graph has these inputs and no others (each must be fed); outputs may
    be more than these (ONNX Runtime allocates an unbound one itself)."""
    found = {t.name: t for t in have}
    names = [t.name for t in want]
    missing = [n for n in names if n not in found]
    extra = [n for n in found if n not in names] if exact else []
    if missing or extra:
        problem = f"has no {kind} {missing[0]!r}" if missing else f"takes {kind} {extra[0]!r}"
        raise BundleError(
            f"{file} {problem}; the manifest ({_layers_note(names)}) expects {kind}s "
            f"{', '.join(names)}, the graph has {', '.join(found)}"
        )
    for tensor in want:
        _check_tensor(file, found[tensor.name], tensor, fixed_axes_refused=exact)


def _check_tensor(file: str, got, want: Tensor, *, fixed_axes_refused: bool) -> None:
    shape = list(got.shape) if isinstance(got.shape, list | tuple) else None
    if got.type != want.type or shape is None or len(shape) != len(want.shape):
        raise BundleError(
            f"{file} {want.name} is {got.type} {got.shape}; expected {want.type} of "
            f"shape {_shape(want.shape)} from the manifest"
        )
    for axis, (g, w) in enumerate(zip(shape, want.shape)):
        fixed = isinstance(g, int) and g >= 0
        if isinstance(w, int) and fixed and g != w:
            raise BundleError(
                f"{file} {want.name} has {g} at axis {axis}; the manifest's sizes make it "
                f"{_shape(want.shape)}: re-export the bundle, or fix its manifest"
            )
        if isinstance(w, str) and fixed and fixed_axes_refused:  # a varying axis, fixed
            raise BundleError(
                f"{file} {want.name} fixes axis {axis} at {g}; expected it to vary "
                f"({_shape(want.shape)}): export it with that axis dynamic"
            )


def _shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _layers_note(names: list[str]) -> str:
    layers = sum(n.startswith(("past_key_", "key_", "present_key_")) for n in names)
    return f"{layers} layers" if layers else "the head"
