"""Decoder segments built from ONNX Runtime's fused operators, the form its own LLM engine
(onnxruntime-genai's model builder) runs.

Per layer: SkipSimplifiedLayerNormalization (the residual add and RMSNorm in one node, the
running residual its fourth output), one MatMul for q, k and v, GroupQueryAttention (rotary
positions, the causal or sliding mask, grouped heads and the cache write in one node), the
output MatMul, the second SkipSimplifiedLayerNormalization, one MatMul for gate and up, SiLU
and the down MatMul: 11 nodes where the plain export (``decoder_model.py``) has ~35. At
batch 1 a decoding step costs mostly its node count, and GroupQueryAttention reads the past
in place: its past and present keys are one buffer ``[1, KV, max_positions, Dh]``, the
position of the new rows given by ``seqlens_k`` (total length - 1). Rolling back rejected
tokens is still moving a length.

Why built here and not cut from the model builder's graph: the builder takes a Hugging Face
folder with a tokenizer and writes one graph for a whole model; edgeexit's decoders (the
demo's byte-level one has no tokenizer) are cut into segments with one head shared by every
exit, and the builder's node names, not a contract, would say where a layer ends. The graph
here is ~150 lines of ``onnx.helper`` over the same operators, checked against PyTorch.

``quantize`` turns every MatMul into MatMulNBits (8 or 4 bits, blocks of ``block_size``)
with ONNX Runtime's own quantizer.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeexit.errors import DataError, ParityError
from edgeexit.export.decoder_model import DecoderLayer, MultiExitDecoder

MS = "com.microsoft"
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
IR_VERSION = 8
FUSED_HEAD_MULTIPLE = 16  # GroupQueryAttention's CPU kernel refuses other head sizes


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


class _Graph:
    """Nodes and initializers of one graph under construction."""

    def __init__(self, prefix: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.prefix = prefix

    def weight(self, name: str, value: np.ndarray) -> str:
        name = f"{self.prefix}{name}"
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        domain = MS if op in _CONTRIB else ""
        self.nodes.append(helper.make_node(op, inputs, outputs, f"{self.prefix}{name}",
                                           domain=domain, **attrs))  # fmt: skip

    def model(self, inputs, outputs, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.weights)
        # IR 8, as the exporter writes opset 17: onnx.helper would stamp its own newest,
        # which older ONNX Runtimes refuse to load whatever the operators
        return helper.make_model(graph, opset_imports=OPSETS, producer_name="edgeexit",
                                 ir_version=IR_VERSION)  # fmt: skip


_CONTRIB = {"SkipSimplifiedLayerNormalization", "GroupQueryAttention"}


def rotary_caches(head_dim: int, max_positions: int, theta: float) -> tuple[np.ndarray, ...]:
    """cos and sin [max_positions, Dh / 2] as GroupQueryAttention reads them (Llama's
    convention: the two halves of each head rotate together), computed as
    ``decoder_model.positions`` computes them (float32 frequencies)."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32) / half))
    angles = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
    return angles.cos().numpy(), angles.sin().numpy()


def _layer(g: _Graph, layer: DecoderLayer, j: int, x: str, residual: str | None,
           eps: float, window: int | None) -> tuple[str, str]:  # fmt: skip
    """Layer j of the segment: (its MLP's output, the residual before it); ``x`` is the
    previous layer's MLP output (``residual`` its residual), or the segment's input."""
    p = f"l{j}_"
    norm = g.weight(f"{p}input_norm", _array(layer.input_layernorm.weight))
    if residual is None:
        g.node("SimplifiedLayerNormalization", [x, norm], [f"{p}h"], f"{p}norm", axis=-1,
               epsilon=eps, stash_type=1)  # fmt: skip
        residual = x
    else:
        g.node("SkipSimplifiedLayerNormalization", [x, residual, norm],
               [f"{p}h", "", "", f"{p}res"], f"{p}norm", epsilon=eps)  # fmt: skip
        residual = f"{p}res"
    projections = (layer.q_proj, layer.k_proj, layer.v_proj)
    w_qkv = torch.cat([q.weight for q in projections]).t()
    g.node("MatMul", [f"{p}h", g.weight(f"{p}w_qkv", _array(w_qkv))], [f"{p}qkv"], f"{p}qkv")
    qkv = f"{p}qkv"
    if layer.q_proj.bias is not None:
        bias = torch.cat([q.bias for q in projections])
        g.node("Add", [qkv, g.weight(f"{p}qkv_bias", _array(bias))], [f"{p}qkvb"], f"{p}qkv_bias")
        qkv = f"{p}qkvb"
    g.node(
        "GroupQueryAttention",
        [qkv, "", "", f"past_key_{j}", f"past_value_{j}", "seqlens_k", "total_sequence_length",
         "cos_cache", "sin_cache"],
        [f"{p}attn", f"present_key_{j}", f"present_value_{j}"], f"{p}attention",
        num_heads=layer.heads, kv_num_heads=layer.kv_heads, scale=1 / math.sqrt(layer.head_dim),
        do_rotary=1, rotary_interleaved=0,
        local_window_size=window if window is not None and layer.windowed else -1,
    )  # fmt: skip
    w_o = g.weight(f"{p}w_o", _array(layer.o_proj.weight.t()))
    g.node("MatMul", [f"{p}attn", w_o], [f"{p}o"], f"{p}o")
    post = g.weight(f"{p}post_norm", _array(layer.post_attention_layernorm.weight))
    g.node("SkipSimplifiedLayerNormalization", [f"{p}o", residual, post],
           [f"{p}h2", "", "", f"{p}res2"], f"{p}post_norm", epsilon=eps)  # fmt: skip
    # gate and up as two MatMuls, as onnxruntime-genai's builder writes them (one MatMul
    # and a Split measured the same), each quantized on its own
    w_gate = g.weight(f"{p}w_gate", _array(layer.gate_proj.weight.t()))
    w_up = g.weight(f"{p}w_up", _array(layer.up_proj.weight.t()))
    g.node("MatMul", [f"{p}h2", w_gate], [f"{p}gate"], f"{p}gate")
    g.node("MatMul", [f"{p}h2", w_up], [f"{p}up"], f"{p}up")
    g.node("Sigmoid", [f"{p}gate"], [f"{p}sig"], f"{p}sigmoid")
    g.node("Mul", [f"{p}gate", f"{p}sig"], [f"{p}silu"], f"{p}silu")
    g.node("Mul", [f"{p}silu", f"{p}up"], [f"{p}act"], f"{p}act")
    w_down = g.weight(f"{p}w_down", _array(layer.down_proj.weight.t()))
    g.node("MatMul", [f"{p}act", w_down], [f"{p}mlp"], f"{p}down")
    return f"{p}mlp", f"{p}res2"


def segment_model(model: MultiExitDecoder, index: int) -> onnx.ModelProto:
    """Segment ``index`` (docs/bundle-format.md, fused decoder segments)."""
    c = model.config
    span = c.segment_layers()[index]
    g = _Graph("")
    cos, sin = rotary_caches(c.head_dim, c.max_positions, c.rope_theta)
    g.weights += [numpy_helper.from_array(cos, "cos_cache"),
                  numpy_helper.from_array(sin, "sin_cache")]  # fmt: skip
    V = helper.make_tensor_value_info
    cache = [1, c.kv_heads, c.max_positions, c.head_dim]
    if index == 0:
        inputs = [V("input_ids", TensorProto.INT64, [1, "T"])]
        g.node("Gather", [g.weight("embed", _array(model.embed_tokens.weight)), "input_ids"],
               ["x"], "embed")  # fmt: skip
        x = "x"
    else:
        inputs, x = [V("hidden", TensorProto.FLOAT, [1, "T", c.dim])], "hidden"
    inputs += [V("seqlens_k", TensorProto.INT32, [1]),
               V("total_sequence_length", TensorProto.INT32, [])]  # fmt: skip
    outputs = [V("hidden_out", TensorProto.FLOAT, [1, "T", c.dim])]
    residual = None
    for j, i in enumerate(span):
        inputs += [V(f"past_{k}_{j}", TensorProto.FLOAT, cache) for k in ("key", "value")]
        outputs += [V(f"present_{k}_{j}", TensorProto.FLOAT, cache) for k in ("key", "value")]
        x, residual = _layer(g, model.layers[i], j, x, residual, c.eps, c.sliding_window)
    g.node("Add", [x, residual], ["hidden_out"], "residual")
    return g.model(inputs, outputs, f"segment_{index}")


def head_model(model: MultiExitDecoder) -> onnx.ModelProto:
    """The shared head: hidden -> logits and confidence (the max softmax probability)."""
    c = model.config
    g = _Graph("")
    V = helper.make_tensor_value_info
    g.node("SimplifiedLayerNormalization", ["hidden", g.weight("norm", _array(model.norm.weight))],
           ["normed"], "norm", axis=-1, epsilon=c.eps, stash_type=1)  # fmt: skip
    g.node("MatMul", ["normed", g.weight("lm_head", _array(model.lm_head.weight.t()))],
           ["logits"], "lm_head")  # fmt: skip
    g.node("Softmax", ["logits"], ["probabilities"], "softmax", axis=-1)
    g.node("ReduceMax", ["probabilities"], ["confidence"], "confidence", axes=[-1], keepdims=0)
    return g.model(
        [V("hidden", TensorProto.FLOAT, [1, "T", c.dim])],
        [V("logits", TensorProto.FLOAT, [1, "T", c.vocab_size]),
         V("confidence", TensorProto.FLOAT, [1, "T"])],
        "head",
    )  # fmt: skip


def quantize(graph: onnx.ModelProto, bits: int, block_size: int) -> onnx.ModelProto:
    """Every MatMul with a constant weight as MatMulNBits (symmetric, blocks of
    ``block_size`` along the input axis), by ONNX Runtime's quantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True,
                                          accuracy_level=4, bits=bits)  # fmt: skip
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(graph, bits=bits, block_size=block_size, is_symmetric=True,
                                     algo_config=config)  # fmt: skip
    quantizer.process()
    return quantizer.model.model


class _Chain:
    """Fused graphs under ONNX Runtime, run the way ``Generator`` runs them (caches as
    in-place buffers), to check them at export."""

    def __init__(self, graphs: list[onnx.ModelProto], model: MultiExitDecoder) -> None:
        import onnxruntime as ort

        self.config = model.config
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sessions = [ort.InferenceSession(g.SerializeToString(), options,
                                              providers=["CPUExecutionProvider"])
                         for g in graphs]  # fmt: skip

    def logits(self, ids: np.ndarray, chunks: tuple[int, ...] | None = None) -> list[np.ndarray]:
        """Every exit's logits [T, V] for ``ids`` [T], fed in ``chunks`` (default: one
        call), each chunk after the previous ones' cached keys and values."""
        c = self.config
        shape = (1, c.kv_heads, c.max_positions, c.head_dim)
        caches = [[np.zeros(shape, np.float32) for _ in range(2 * len(span))]
                  for span in c.segment_layers()]  # fmt: skip
        exits: list[list[np.ndarray]] = [[] for _ in caches]
        start = 0
        for t in chunks or (len(ids),):
            x: np.ndarray = ids[None, start : start + t]
            for i, session in enumerate(self.sessions[:-1]):
                feed = {"input_ids" if i == 0 else "hidden": x,
                        "seqlens_k": np.array([start + t - 1], np.int32),
                        "total_sequence_length": np.array(start + t, np.int32)}  # fmt: skip
                for j in range(len(caches[i]) // 2):
                    feed[f"past_key_{j}"], feed[f"past_value_{j}"] = caches[i][2 * j : 2 * j + 2]
                x, *present = session.run(None, feed)
                caches[i] = present
                exits[i].append(self.sessions[-1].run(None, {"hidden": x})[0][0])
            start += t
        return [np.concatenate(e) for e in exits]


CHECK_CHUNKS = (5, 1, 3, 2, 1, 2)  # a prompt, decoding steps, verifications


def check_parity(model: MultiExitDecoder, chain: _Chain, atol: float) -> None:
    """Every exit's logits, fed in CHECK_CHUNKS, against PyTorch's on the whole sequence."""
    c = model.config
    chunks, n = [], 0
    for t in CHECK_CHUNKS:
        if n + t <= c.max_positions:
            chunks.append(t)
            n += t
    ids = torch.randint(0, c.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = [e[0].numpy() for e in model(ids[None])]
    got = chain.logits(ids.numpy(), tuple(chunks))
    for e, (w, g) in enumerate(zip(want, got)):
        diff = float(np.max(np.abs(w - g)))
        if not diff <= atol * max(1.0, float(np.max(np.abs(w)))):
            raise ParityError(
                f"fused exit {e} does not match PyTorch: its logits differ by {diff:.3g} "
                f"(atol {atol:g}, relative to the largest logit)"
            )


def greedy_continuations(model: MultiExitDecoder, prompts, new_tokens: int) -> list[np.ndarray]:
    """PyTorch's full-model greedy continuation of each prompt: prompt + new tokens."""
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor(list(prompt), dtype=torch.long)
            room = model.config.max_positions - len(ids)
            for _ in range(max(0, min(new_tokens, room))):
                ids = torch.cat([ids, model(ids[None])[-1][0, -1].argmax()[None]])
            out.append(ids.numpy())
    return out


AGREEMENT_TOKENS = 32  # each prompt's fp32 continuation the agreement is measured on


def precision_agreement(
    model: MultiExitDecoder, chain: _Chain, prompts, new_tokens: int = AGREEMENT_TOKENS
) -> dict:
    """How often the quantized full model picks fp32's next token, teacher-forced on fp32's
    greedy continuations of ``prompts`` (the generated positions only)."""
    same = total = 0
    for ids, prompt in zip(greedy_continuations(model, prompts, new_tokens), prompts):
        picks = chain.logits(ids)[-1].argmax(-1)
        start = len(prompt)
        same += int(np.sum(picks[start - 1 : -1] == ids[start:]))
        total += len(ids) - start
    return {
        "agreement": same / total if total else None,
        "positions": total,
        "prompts": len(prompts),
        "measured_on": "fp32 greedy continuations, teacher-forced",
    }


def _check_prompts(prompts: list[list[int]], c) -> None:
    for i, prompt in enumerate(prompts):
        if not prompt or len(prompt) >= c.max_positions:
            raise DataError(
                f"prompt {i} has {len(prompt)} tokens; expected 1..{c.max_positions - 1} (the "
                "caches hold max_positions, generated tokens included)"
            )
        bad = [t for t in prompt if not 0 <= t < c.vocab_size]
        if bad:
            raise DataError(
                f"prompt {i} holds token id {bad[0]}; expected ids in 0..{c.vocab_size - 1}"
            )


def fused_graphs(
    model: MultiExitDecoder,
    precision: str,
    block_size: int,
    prompts,
    atol: float,
    draft: str | None = None,
):
    """[(file name, graph)] for the segments and the head, fp32 checked against PyTorch, then
    quantized if ``precision`` asks; the draft's graphs (quantized copies of every segment
    but the last and of the head, [] without ``draft``); and what to add to the manifest."""
    c = model.config
    graphs = [(f"segment_{i:02d}.onnx", segment_model(model, i)) for i in range(len(c.exit_after))]
    graphs.append(("head.onnx", head_model(model)))
    check_parity(model, _Chain([g for _, g in graphs], model), atol)
    drafts = []
    if draft is not None:
        copies = [("draft_" + name, _copy(g)) for name, g in (*graphs[:-2], graphs[-1])]
        drafts = [(name, quantize(g, BITS[draft], block_size)) for name, g in copies]
    if precision == "fp32":
        return graphs, drafts, {}
    prompts = [list(p) for p in prompts]
    _check_prompts(prompts, c)
    graphs = [(name, quantize(g, BITS[precision], block_size)) for name, g in graphs]
    record = {
        "bits": BITS[precision],
        "block_size": block_size,
        "method": "onnxruntime MatMulNBitsQuantizer, symmetric, accuracy level 4",
    }
    if prompts:
        record.update(precision_agreement(model, _Chain([g for _, g in graphs], model), prompts))
    return graphs, drafts, {"quantization": record}


BITS = {"int8": 8, "int4": 4}


def _copy(graph: onnx.ModelProto) -> onnx.ModelProto:
    """A copy to quantize (the quantizer changes the graph it is given)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    return copy
