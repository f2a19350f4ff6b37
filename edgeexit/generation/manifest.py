"""The manifest of a decoder bundle (``edgeexit.bundle/decoder-1``), docs/bundle-format.md.

A decoder bundle holds one graph per segment (a group of decoder layers; segment 0 starts
with the token embedding) and one head graph that every exit shares. Graph inputs and
outputs follow fixed names, so the manifest only counts layers:

- segment i: ``input_ids`` [1, T] int64 (segment 0) or ``hidden`` [1, T, D] float32, and
  ``past_key_j``/``past_value_j`` [1, P, KV, Dh] for each of its layers j; returns
  ``hidden_out`` [1, T, D] and ``key_j``/``value_j`` [1, T, KV, Dh] for the T new positions
  (P..P+T-1, P read from the past's length). KV is ``kv_heads``, written only where it
  is fewer than ``heads`` (grouped-query attention); a manifest without it has KV = H;
- head: ``hidden`` [1, T, D] -> ``logits`` [1, T, V] and ``confidence`` [1, T] (the max
  softmax probability).

A bundle with ``"attention": "fused"`` (ONNX Runtime's fused operators,
``export/decoder_fused.py``) keeps each cache as one buffer ``[1, KV, max_positions, Dh]``
that a segment reads and writes in place: its segments take ``past_key_j``/``past_value_j``
of that shape, ``seqlens_k`` int32 [1] (the total length - 1) and ``total_sequence_length``
int32 [], and give ``present_key_j``/``present_value_j`` (the same buffers) for ``key_j``/
``value_j``. ``precision`` says how its weights are stored: fp32, or int8/int4 (MatMulNBits).
A fused bundle may carry a quantized ``draft``: int8/int4 copies of every segment but the
last and of the head, the same tensors, which self-speculative decoding drafts with (writing
the same caches; the verification rewrites them at full precision).

A manifest is untrusted input: every field is checked for its type and range here, the
``generation`` block too (with the checks ``options.py`` gives the decoding loops), before
anything is allocated from it; ``graphs.py`` then checks the graphs against it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeexit import files
from edgeexit.bundle import (
    DECODER_FORMAT,
    MANIFEST,
    ExternalFile,
    graph_file,
    read_manifest_document,
)
from edgeexit.bundle import (
    FORMAT as CLASSIFIER_FORMAT,
)
from edgeexit.errors import BundleError, InputError
from edgeexit.generation.options import SpeculativeOptions, exit_thresholds, is_count, is_number

FORMAT = DECODER_FORMAT
# No size of a decoder comes near this (a 256k vocabulary, a 10M-token context); a manifest
# that claims more is refused before anything is allocated. What the sizes cost together
# is bounded by memory when the bundle is loaded (``caches.check_memory``).
MAX_SIZE = 1 << 24
SIZES = ("vocab_size", "dim", "heads", "head_dim", "max_positions")
ATTENTION = ("plain", "fused")  # the graphs' form, which decides the caches' layout
PRECISIONS = ("fp32", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what ONNX Runtime's blockwise quantizer takes
GENERATION_KEYS = ("self_speculative", "early_exit", "report")


@dataclass(frozen=True)
class GraphFile:
    """One graph of the bundle; ``external_data`` as for a classifier segment."""

    file: str
    sha256: str
    layers: int = 0  # decoder layers in it (0: the head)
    external_data: tuple[ExternalFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        if self.layers:
            doc["layers"] = self.layers
        if self.external_data:
            doc["external_data"] = [
                {"file": e.file, "sha256": e.sha256} for e in self.external_data
            ]
        return doc


@dataclass(frozen=True)
class DraftGraphs:
    """Quantized copies of segments 0..N-2 and of the head, for drafting."""

    precision: str
    segments: tuple[GraphFile, ...]
    head: GraphFile

    @property
    def graphs(self) -> tuple[GraphFile, ...]:
        return (*self.segments, self.head)

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "segments": [s.to_json() for s in self.segments],
                "head": self.head.to_json()}  # fmt: skip


@dataclass(frozen=True)
class DecoderManifest:
    vocab_size: int
    dim: int
    heads: int
    head_dim: int
    max_positions: int  # the caches' length: prompt plus generated tokens
    eos_token_ids: tuple[int, ...]  # any of them ends a text; () for none
    segments: tuple[GraphFile, ...]
    head: GraphFile
    generation: dict[str, Any] = field(default_factory=dict)  # what calibrate chose
    extra: dict[str, Any] = field(default_factory=dict)
    kv_heads: int | None = None  # the caches' heads (grouped-query attention); None: heads
    attention: str = "plain"  # or "fused": one in-place buffer per cache (ATTENTION)
    precision: str = "fp32"  # how the weights are stored (PRECISIONS)
    draft: DraftGraphs | None = None  # quantized copies to draft with (fused only)

    @property
    def fused(self) -> bool:
        return self.attention == "fused"

    def __post_init__(self) -> None:
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    @property
    def layers(self) -> int:
        return sum(s.layers for s in self.segments)

    @property
    def graphs(self) -> tuple[GraphFile, ...]:
        """The model's graph files: the segments, then the shared head."""
        return (*self.segments, self.head)

    @property
    def all_graphs(self) -> tuple[GraphFile, ...]:
        """Every graph file, for verification: the model's, then the draft's."""
        return (*self.graphs, *(self.draft.graphs if self.draft else ()))

    def with_generation(self, choice: dict[str, Any]) -> DecoderManifest:
        """This manifest with ``choice`` as its generation block, checked as a reader will."""
        return replace(self, generation=check_generation(choice, self.num_exits, "generation"))

    def to_json(self) -> dict[str, Any]:
        eos = self.eos_token_ids
        return {
            "format": FORMAT,
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "heads": self.heads,
            "head_dim": self.head_dim,
            # only where it differs: a bundle without grouped-query attention reads as before
            **({"kv_heads": self.kv_heads} if self.kv_heads != self.heads else {}),
            # only where not the default: a plain fp32 bundle reads as before
            **({"attention": self.attention} if self.fused else {}),
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            **({"draft": self.draft.to_json()} if self.draft else {}),
            "max_positions": self.max_positions,
            # one id as a number (as every earlier edgeexit wrote it), several as a list
            "eos_token_id": (None if not eos else eos[0] if len(eos) == 1 else list(eos)),
            "segments": [s.to_json() for s in self.segments],
            "head": self.head.to_json(),
            "generation": dict(self.generation),
            **self.extra,
        }

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "manifest") -> DecoderManifest:
        """Parse and check a decoder manifest: every field's type and range, before
        anything is allocated from it; BundleError names the first bad field."""
        if isinstance(doc, dict) and doc.get("format") == CLASSIFIER_FORMAT:
            raise BundleError(
                "this is a classifier bundle, not a language model: run it with `edgeexit run`"
            )
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise BundleError(f"{source}: format is {got!r}; expected {FORMAT!r}")
        missing = [k for k in (*SIZES, "segments", "head") if k not in doc]
        if missing:
            raise BundleError(f"{source} has no {missing[0]!r}; re-export the bundle")
        sizes = {k: _size(doc[k], k, source) for k in SIZES}
        if sizes["heads"] * sizes["head_dim"] != sizes["dim"]:
            raise BundleError(
                f"{source}: heads x head_dim is {sizes['heads']} x {sizes['head_dim']}; "
                f"expected dim ({sizes['dim']})"
            )
        kv_heads = _kv_heads(doc.get("kv_heads", sizes["heads"]), sizes["heads"], source)
        attention = _choice(doc.get("attention", "plain"), "attention", ATTENTION, source)
        precision = _choice(doc.get("precision", "fp32"), "precision", PRECISIONS, source)
        if precision != "fp32" and attention != "fused":
            raise BundleError(f"{source}: precision {precision} needs fused attention")
        segments = _segments(doc["segments"], source)
        head = _graph(doc["head"], "head", source)
        if head.layers:
            raise BundleError(f"{source}: head.layers is {head.layers}; the head has no layers")
        draft = _draft(doc.get("draft"), segments, source)
        if draft is not None and doc.get("attention") != "fused":
            raise BundleError(f"{source}: a draft needs fused attention")
        _distinct_files((*segments, head, *(draft.graphs if draft else ())), len(segments) + 1,
                        source)  # fmt: skip
        eos = _eos_ids(doc.get("eos_token_id"), sizes["vocab_size"], source)
        extra = {k: v for k, v in doc.items() if k not in (*SIZES, *_OWN)}
        _check_extra(extra, segments, source)
        generation = check_generation(doc.get("generation"), len(segments), source)
        return cls(**sizes, eos_token_ids=eos, segments=segments, head=head,
                   generation=generation, extra=extra, kv_heads=kv_heads,
                   attention=attention, precision=precision, draft=draft)  # fmt: skip


_OWN = ("format", "segments", "head", "eos_token_id", "generation", "kv_heads", "attention",
        "precision", "draft")  # fmt: skip


def read_decoder_manifest(bundle_dir: str | os.PathLike) -> DecoderManifest:
    doc = read_manifest_document(bundle_dir)
    return DecoderManifest.from_json(doc, source=str(Path(bundle_dir) / MANIFEST))


def write_decoder_manifest(bundle_dir: str | os.PathLike, manifest: DecoderManifest) -> None:
    files.write_json_atomic(Path(bundle_dir) / MANIFEST, manifest.to_json(), what="manifest")


def form_in_words(m: DecoderManifest) -> str:
    """How the graphs are built and their weights stored, and what quantization cost as
    export measured it: one clause."""
    form = "fused operators" if m.fused else "standard ONNX operators"
    q = m.extra.get("quantization")
    if m.precision == "fp32":
        return f"{form}, fp32 weights" + (f"; {m.draft.precision} draft" if m.draft else "")
    said = "agreement with fp32 not measured: no prompts were given at export"
    if isinstance(q, dict) and q.get("agreement") is not None:
        said = (f"picks fp32's next token at {q['agreement']:.1%} of {q['positions']} positions "
                f"({q['prompts']} prompts, teacher-forced)")  # fmt: skip
    blocks = f" in blocks of {q['block_size']}" if isinstance(q, dict) else ""
    return f"{form}, {m.precision} weights{blocks}: {said}"


def draft_in_words(m: DecoderManifest) -> str:
    """What self-speculative decoding drafts with."""
    if m.draft is None:
        return "the early segments themselves, at the model's precision"
    return (
        f"{m.draft.precision} copies of the early segments and the head (the full-precision "
        "verification rewrites their caches: the tokens stay the model's)"
    )


# -- field checks ---------------------------------------------------------------------------


def _size(value: Any, what: str, source: str) -> int:
    if not is_count(value) or not 1 <= value <= MAX_SIZE:
        raise BundleError(f"{source}: {what} is {value!r}; expected an integer in 1..{MAX_SIZE}")
    return value


def _choice(value: Any, what: str, allowed: tuple[str, ...], source: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise BundleError(f"{source}: {what} is {value!r}; expected one of {', '.join(allowed)}")
    return value


def _kv_heads(value: Any, heads: int, source: str) -> int:
    """The caches' heads: a divisor of ``heads`` (each serves as many query heads)."""
    if not is_count(value) or not 1 <= value <= heads or heads % value:
        raise BundleError(f"{source}: kv_heads is {value!r}; expected a divisor of heads ({heads})")
    return value


def _segments(doc: Any, source: str) -> tuple[GraphFile, ...]:
    if not isinstance(doc, list) or not doc:
        raise BundleError(f"{source}: segments must be a non-empty list of graphs")
    segments = tuple(_graph(s, f"segments[{i}]", source) for i, s in enumerate(doc))
    for i, s in enumerate(segments):
        if s.layers < 1:
            raise BundleError(f"{source}: segments[{i}].layers must be its count of layers (>= 1)")
    return segments


def _distinct_files(graphs: tuple[GraphFile, ...], model_graphs: int, source: str) -> None:
    """Each graph its own file: one file listed many times would be read, hashed and
    opened as many times (a few lines of manifest, unbounded memory)."""
    seen: dict[str, int] = {}
    for i, g in enumerate(graphs):
        if g.file in seen:
            first, again = (_graph_name(n, model_graphs) for n in (seen[g.file], i))
            raise BundleError(
                f"{source}: {again} is {g.file!r}, as {first} is; expected a file per graph"
            )
        seen[g.file] = i


def _graph_name(index: int, count: int) -> str:
    """Graphs in ``all_graphs`` order: segments, head, then the draft's (count: the
    segments and the head)."""
    if index < count - 1:
        return f"segments[{index}]"
    if index == count - 1:
        return "head"
    return f"draft graph {index - count}"


def _draft(doc: Any, segments: tuple[GraphFile, ...], source: str) -> DraftGraphs | None:
    """The draft's graphs: one quantized copy of each segment but the last, and the head."""
    if doc is None:
        return None
    where = f"{source}: draft"
    if not isinstance(doc, dict) or set(doc) != {"precision", "segments", "head"}:
        raise BundleError(f"{where} must be an object of precision, segments and head")
    precision = _choice(doc["precision"], "draft.precision", PRECISIONS[1:], source)
    drafts = _segments(doc["segments"], f"{source} (draft)")
    if [d.layers for d in drafts] != [s.layers for s in segments[:-1]]:
        raise BundleError(
            f"{where} has segments of {[d.layers for d in drafts]} layers; expected a copy of "
            f"each segment but the last ({[s.layers for s in segments[:-1]]})"
        )
    head = _graph(doc["head"], "draft.head", source)
    if head.layers:
        raise BundleError(f"{where}.head.layers is {head.layers}; the head has no layers")
    return DraftGraphs(precision, drafts, head)


def _graph(doc: Any, where: str, source: str) -> GraphFile:
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: {where} must be an object, got {type(doc).__name__}")
    file = graph_file(doc, where)
    layers = doc.get("layers", 0)
    if not is_count(layers) or not 0 <= layers <= MAX_SIZE:
        raise BundleError(f"{source}: {where}.layers is {layers!r}; expected a count of layers")
    return GraphFile(file.file, file.sha256, layers, file.external_data)


def _eos_ids(value: Any, vocab: int, source: str) -> tuple[int, ...]:
    """null: no end-of-text token; an id; or a non-empty list of ids (any ends a text)."""
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if (isinstance(value, list) and not value) or not all(
        is_count(i) and 0 <= i < vocab for i in ids
    ):
        raise BundleError(
            f"{source}: eos_token_id is {value!r}; expected a token id in 0..{vocab - 1}, a "
            "list of them, or null"
        )
    return tuple(dict.fromkeys(ids))


def _check_extra(extra: dict[str, Any], segments: tuple[GraphFile, ...], source: str) -> None:
    """The optional keys export writes; any other is kept as it is, and never read."""
    tokenizer = extra.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise BundleError(f"{source}: tokenizer is {tokenizer!r}; expected a name such as 'bytes'")
    if "exit_after" in extra:
        want = [sum(s.layers for s in segments[: i + 1]) for i in range(len(segments))]
        if extra["exit_after"] != want or not all(map(is_count, extra["exit_after"])):
            raise BundleError(
                f"{source}: exit_after is {extra['exit_after']!r}; the segments' layers make "
                f"it {want}"
            )
    _check_quantization(extra.get("quantization"), source)
    opset = extra.get("opset")
    if opset is not None and (not is_count(opset) or not 1 <= opset <= 1000):
        raise BundleError(f"{source}: opset is {opset!r}; expected an ONNX opset number")


def _check_quantization(q: Any, source: str) -> None:
    """What export recorded of a quantized bundle, as `inspect` shows it."""
    if q is None:
        return
    ok = (
        isinstance(q, dict)
        and q.get("bits") in (4, 8)
        and is_count(q.get("block_size"))
        and q["block_size"] > 0
        and (q.get("agreement") is None or (is_number(q["agreement"]) and 0 <= q["agreement"] <= 1))
        and all(is_count(q.get(k, 0)) and q.get(k, 0) >= 0 for k in ("positions", "prompts"))
    )
    if not ok:
        raise BundleError(
            f"{source}: quantization is {q!r}; expected bits 4 or 8, a block_size, and an "
            "agreement in [0, 1] (or null) over counts of positions and prompts"
        )


def check_generation(doc: Any, num_exits: int, source: str) -> dict[str, Any]:
    """The ``generation`` block (what calibrate-generation chose), every value checked as
    the decoding loops will use it; returned as it is."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: generation is {type(doc).__name__}; expected an object")
    unknown = [k for k in doc if k not in GENERATION_KEYS]
    if unknown:
        raise BundleError(
            f"{source}: generation has {unknown[0]!r}; expected only {', '.join(GENERATION_KEYS)}"
        )
    if "self_speculative" in doc:
        _speculative(doc["self_speculative"], num_exits, f"{source}: generation.self_speculative")
    if doc.get("early_exit") is not None:
        _in_block(f"{source}: generation.early_exit", exit_thresholds, doc["early_exit"], num_exits)
    if "report" in doc:
        _report(doc["report"], num_exits, f"{source}: generation.report")
    return dict(doc)


def _speculative(doc: Any, num_exits: int, where: str) -> SpeculativeOptions:
    if not isinstance(doc, dict):
        raise BundleError(f"{where} is {type(doc).__name__}; expected an object")
    fields = ("k", "gamma", "draft_stop")
    unknown = [k for k in doc if k not in fields]
    if unknown:
        raise BundleError(f"{where} has {unknown[0]!r}; expected only {', '.join(fields)}")
    options = _in_block(where, lambda: SpeculativeOptions(**doc))
    if options.k >= num_exits:
        raise BundleError(
            f"{where}: k is {options.k}; expected 1..{num_exits - 1}, segments that draft "
            "with one left to verify"
        )
    return options


def _in_block(where: str, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, its InputError said as the manifest's problem."""
    try:
        return check(*args)
    except InputError as err:
        raise BundleError(f"{where}: {str(err).replace('`', '')}") from err


# what each figure of the report is: (check, what is expected)
_FIGURES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "speculative_speedup": (lambda v: is_number(v) and 0 < v < math.inf, "a positive number"),
    "early_exit_speedup": (lambda v: v is None or (is_number(v) and 0 < v < math.inf),
                           "a positive number or null"),
    "min_agreement": (lambda v: is_number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "calibration_agreement": (lambda v: is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "calibration_bound": (lambda v: is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "held_out_agreement": (lambda v: v is None or (is_number(v) and 0 <= v <= 1),
                           "a fraction in [0, 1] or null"),
    "mean_exit_depth": (lambda v: v is None or (is_number(v) and 0 < v <= 1),
                        "a fraction in (0, 1] or null"),
    "held": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
}  # fmt: skip


def _report(doc: Any, num_exits: int, where: str) -> None:
    """What calibrate-generation measured, as `inspect` shows it: each figure it names is
    of its kind (a figure it does not name is kept, and never read)."""
    if not isinstance(doc, dict):
        raise BundleError(f"{where} is {type(doc).__name__}; expected an object")
    for name, (ok, expected) in _FIGURES.items():
        if name in doc and not ok(doc[name]):
            raise BundleError(f"{where}.{name} is {doc[name]!r}; expected {expected}")
    if "self_speculative" in doc:
        _speculative(doc["self_speculative"], num_exits, f"{where}.self_speculative")
    if doc.get("early_exit") is not None:
        _in_block(f"{where}.early_exit", exit_thresholds, doc["early_exit"], num_exits)
