"""Export a ``MultiExitDecoder`` as a decoder bundle: one graph per segment, one shared head.

Every graph is exported with its token axis and its past axis dynamic, checked against
PyTorch under ONNX Runtime at several (new tokens, past length) shapes, including an empty
past (the prompt) and one new token after a long past (decoding), and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edgeexit.bundle import atomic_bundle_dir, check_bundle_output, sha256_file
from edgeexit.errors import ExportError, ParityError
from edgeexit.export.convert import export_graph
from edgeexit.export.decoder_fused import FUSED_HEAD_MULTIPLE, fused_graphs
from edgeexit.export.decoder_model import HeadGraph, MultiExitDecoder, SegmentGraph
from edgeexit.export.options import DEFAULT_ATOL, DEFAULT_OPSET
from edgeexit.generation.manifest import (
    ATTENTION,
    BLOCK_SIZES,
    PRECISIONS,
    DecoderManifest,
    DraftGraphs,
    GraphFile,
    write_decoder_manifest,
)
from edgeexit.runtime.session import cpu_session

# (new tokens, past length) the graphs are checked at: a prompt, decoding, a verification.
CHECK_SHAPES = ((5, 0), (1, 7), (3, 4))


def export_decoder(
    model: MultiExitDecoder,
    out_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    tokenizer: str | None = None,
    attention: str = "auto",
    precision: str = "fp32",
    block_size: int = 32,
    prompts: Sequence[Sequence[int]] = (),
    draft: str | None = None,
) -> DecoderManifest:
    """Write ``model`` to ``out_dir`` as a decoder bundle, validated; return its manifest.
    ``tokenizer="bytes"`` marks a byte-level model: `generate --prompt TEXT` then works.

    ``attention="fused"`` builds the segments from ONNX Runtime's fused operators
    (``decoder_fused.py``), which take head sizes in multiples of 16; ``"plain"`` exports
    them from PyTorch, standard ONNX operators only; ``"auto"`` (the default): fused where
    the head size allows. Only fused segments take ``precision`` int8 or int4 (MatMulNBits in
    blocks of ``block_size``), whose agreement with fp32 is measured on ``prompts`` (token
    ids) and kept in the manifest. ``draft`` (int8 or int4; fp32 models only) adds
    quantized copies of every segment but the last and of the head, which self-speculative
    decoding drafts with: its tokens stay the full model's, its drafts cost less."""
    check_bundle_output(out_dir)
    attention = decoder_form(model.config, attention, precision, draft, block_size)
    model.eval()
    if attention == "fused":
        return _export_fused(model, out_dir, tokenizer, precision, block_size, prompts, atol,
                             draft)  # fmt: skip
    config = model.config
    with atomic_bundle_dir(out_dir) as tmp, torch.no_grad():
        segments = []
        for i, layers in enumerate(config.segment_layers()):
            graph = SegmentGraph(model, i)
            path = tmp / f"segment_{i:02d}.onnx"
            names = _segment_names(i, len(layers))
            export_graph(
                graph, _segment_args(model, i, len(layers), 3, 2), path, *names,
                opset=opset, exporter="torchscript", axes=_axes(*names),
            )  # fmt: skip
            _check(graph, path, names[0], lambda t, p, i=i, n=len(layers): _segment_args(
                model, i, n, t, p), atol)  # fmt: skip
            segments.append(GraphFile(path.name, sha256_file(path), len(layers)))
        head, path = HeadGraph(model), tmp / "head.onnx"
        names = (["hidden"], ["logits", "confidence"])
        export_graph(
            head, (torch.randn(1, 3, config.dim),), path, *names,
            opset=opset, exporter="torchscript", axes=_axes(*names),
        )  # fmt: skip
        _check(head, path, names[0], lambda t, p: (torch.randn(1, t, config.dim),), atol)
        manifest = _manifest(config, segments, GraphFile(path.name, sha256_file(path)),
                             {"opset": opset}, tokenizer)  # fmt: skip
        write_decoder_manifest(tmp, manifest)
    return manifest


def _manifest(config, segments, head: GraphFile, extra: dict, tokenizer: str | None, **form):
    """The manifest of a decoder exported from ``config``, either form."""
    return DecoderManifest(
        vocab_size=config.vocab_size,
        dim=config.dim,
        heads=config.heads,
        head_dim=config.head_dim,
        kv_heads=config.kv_heads,
        max_positions=config.max_positions,
        eos_token_ids=config.eos_token_ids,
        segments=tuple(segments),
        head=head,
        extra={
            "exit_after": list(config.exit_after),
            **extra,
            **({"tokenizer": tokenizer} if tokenizer else {}),
        },
        **form,
    )


def decoder_form(
    config, attention: str, precision: str, draft: str | None = None, block_size: int = 32
) -> str:
    """The form the segments take: ``attention``, with "auto" resolved; refused in one line
    where the model or the precision cannot take it."""
    if attention not in (*ATTENTION, "auto") or precision not in PRECISIONS:
        raise ExportError(
            f"attention {attention!r}, precision {precision!r}: expected one of "
            f"auto/{'/'.join(ATTENTION)} and one of {'/'.join(PRECISIONS)}"
        )
    fits = config.head_dim % FUSED_HEAD_MULTIPLE == 0
    if attention == "auto":
        attention = "fused" if fits or precision != "fp32" else "plain"
    if attention == "fused" and not fits:
        raise ExportError(
            f"fused attention takes head sizes in multiples of {FUSED_HEAD_MULTIPLE} (ONNX "
            f"Runtime's GroupQueryAttention); this model's is {config.head_dim}"
            + ("" if precision == "fp32" else f": precision {precision} needs fused attention")
        )
    if precision != "fp32" and attention != "fused":
        raise ExportError(f"precision {precision} needs fused attention")
    if block_size not in BLOCK_SIZES:
        raise ExportError(
            f"`block_size` is {block_size!r}; expected one of {', '.join(map(str, BLOCK_SIZES))}"
        )
    if draft is not None:
        if draft not in PRECISIONS[1:]:
            raise ExportError(f"draft {draft!r}: expected int8 or int4")
        # A quantized model's verification would compute the early layers over several
        # positions at once, where MatMulNBits rounds differently than for one (up to 0.02
        # on the demo's logits): its drafting would no longer give its full decoding's tokens.
        if precision != "fp32":
            raise ExportError(
                f"a quantized draft is for fp32 models; this one is {precision}, whose own "
                "early segments draft at that precision already"
            )
        if attention != "fused":
            raise ExportError("a quantized draft needs fused attention")
    return attention


def _export_fused(model, out_dir, tokenizer, precision, block_size, prompts, atol, draft):
    """``export_decoder`` with fused graphs: built, checked against PyTorch in fp32, then
    quantized if asked and measured against fp32 on the prompts."""
    config = model.config
    spans = config.segment_layers()
    with atomic_bundle_dir(out_dir) as tmp, torch.no_grad():
        graphs, drafts, extra = fused_graphs(model, precision, block_size, prompts, atol, draft)
        *segments, head = _write(tmp, graphs, spans)
        form = {"attention": "fused", "precision": precision}
        if draft:
            *copies, draft_head = _write(tmp, drafts, spans[:-1])
            form["draft"] = DraftGraphs(draft, tuple(copies), draft_head)
        manifest = _manifest(config, segments, head, {"opset": DEFAULT_OPSET, **extra},
                             tokenizer, **form)  # fmt: skip
        write_decoder_manifest(tmp, manifest)
    return manifest


def _write(folder: Path, graphs, spans) -> list[GraphFile]:
    """Write each (file name, graph) into ``folder``: segments (their layers from ``spans``)
    and, last, a head."""
    written = []
    for i, (name, graph) in enumerate(graphs):
        (folder / name).write_bytes(graph.SerializeToString())
        layers = len(spans[i]) if i < len(spans) else 0
        written.append(GraphFile(name, sha256_file(folder / name), layers))
    return written


def _segment_names(index: int, layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}_{j}" for j in range(layers) for kind in ("key", "value")]
    new = [f"{kind}_{j}" for j in range(layers) for kind in ("key", "value")]
    return ["input_ids" if index == 0 else "hidden", *past], ["hidden_out", *new]


def _axes(inputs: list[str], outputs: list[str]) -> dict[str, dict[int, str]]:
    return {n: {1: "past" if n.startswith("past_") else "tokens"} for n in (*inputs, *outputs)}


def _segment_args(
    model: MultiExitDecoder, index: int, layers: int, tokens: int, past: int
) -> tuple[torch.Tensor, ...]:
    c = model.config
    generator = torch.Generator().manual_seed(tokens * 31 + past)
    if index == 0:
        x = torch.randint(0, c.vocab_size, (1, tokens), generator=generator)
    else:
        x = torch.randn(1, tokens, c.dim, generator=generator)
    cache = [torch.randn(1, past, c.kv_heads, c.head_dim, generator=generator) for _ in range(2)]
    return (x, *(t for _ in range(layers) for t in cache))


def _check(graph: torch.nn.Module, path: Path, names: list[str], args_at, atol: float) -> None:
    """The graph under ONNX Runtime against PyTorch at every shape of CHECK_SHAPES."""
    session = cpu_session(path, what=path.name, error=ExportError)
    for tokens, past in CHECK_SHAPES:
        args = args_at(tokens, past)
        want = graph(*args)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        for name, w, g in zip([o.name for o in session.get_outputs()], want, got):
            diff = float(np.max(np.abs(w.numpy() - g))) if g.size else 0.0
            if not diff <= atol:
                raise ParityError(
                    f"{path.name} does not match PyTorch at {tokens} new tokens after "
                    f"{past}: {name} differs by {diff:.3g} (atol {atol:g})",
                    report=_Mismatch(path.name, tokens, past, name, diff, atol),
                )


class _Mismatch:
    """The one check that failed, for ParityError's report."""

    def __init__(self, graph: str, tokens: int, past: int, output: str, diff: float, atol: float):
        self.doc = {"graph": graph, "tokens": tokens, "past": past, "output": output,
                    "max_abs_diff": diff, "atol": atol}  # fmt: skip

    def to_json(self) -> dict:
        return dict(self.doc)

    def __rich__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.doc.items())
