"""The decoder contract: a causal language model whose exits share one LM head.

A ``MultiExitDecoder`` is a Llama-style decoder (RMSNorm, rotary positions, SwiGLU MLP)
whose layers are grouped into segments by ``exit_after`` (the layer counts after which an
exit reads the hidden state). Every exit reads it through the same head (final norm +
unembedding), as Sorted LLaMA and LayerSkip do, so the bundle stores the head once. What
Mistral and Qwen2 add is optional: fewer key/value heads than query heads (grouped-query
attention, cached as they are), biases on the q, k and v projections, and a sliding
attention window on some or all layers.

Each layer takes its own past keys and values and returns only the new ones: the runtime
keeps every cache pre-allocated, writes the new rows in place and rolls back by moving a
length, never by concatenating. Caches are laid out ``[batch, position, kv_head, head_dim]``
so that a prefix of positions is one contiguous block (batch 1).

The same weights load into transformers' ``LlamaForCausalLM``
(``edgeexit.examples.hf_llama``: ``llama_to_decoder``/``decoder_to_llama``), the peer
measured against in benchmarks; Mistral's and Qwen2's models convert the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from edgeexit.errors import ModelContractError
from edgeexit.generation.options import is_count, is_number


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 257  # bytes + an end-of-text id (256)
    dim: int = 128
    heads: int = 4
    layers: int = 6
    hidden: int = 344  # the MLP's inner size
    exit_after: tuple[int, ...] = (2, 4, 6)  # layer counts after which an exit reads
    max_positions: int = 512
    rope_theta: float = 10000.0
    eps: float = 1e-5
    eos_token_id: int | tuple[int, ...] | None = 256  # several: any of them ends a text
    kv_heads: int | None = None  # key/value heads (grouped-query attention); None: heads
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    sliding_window: int | None = None  # positions a query sees, itself included (Mistral)
    sliding_layers: tuple[int, ...] | None = None  # the layers it applies to; None: every one

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "heads", "layers", "hidden", "max_positions"):
            value = getattr(self, name)
            if not is_count(value) or value < 1:
                raise ModelContractError(f"`{name}` is {value!r}; expected a positive integer")
        for name in ("rope_theta", "eps"):
            value = getattr(self, name)
            if not is_number(value) or not 0 < value < math.inf:
                raise ModelContractError(f"`{name}` is {value!r}; expected a positive number")
        bounds = list(self.exit_after)
        if not all(map(is_count, bounds)):
            raise ModelContractError(f"exit_after {self.exit_after} must hold layer counts")
        if not bounds or bounds != sorted(set(bounds)) or bounds[0] < 1:
            raise ModelContractError(f"exit_after {self.exit_after} must rise from 1")
        if bounds[-1] != self.layers:
            raise ModelContractError(
                f"exit_after ends at {bounds[-1]}; expected the last layer ({self.layers})"
            )
        if isinstance(self.eos_token_id, list):  # as a transformers config lists them
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        for eos in self.eos_token_ids:
            if not is_count(eos) or not 0 <= eos < self.vocab_size:
                raise ModelContractError(
                    f"eos_token_id {eos!r} is not a token id: expected 0..{self.vocab_size - 1}"
                )
        if self.dim % self.heads or self.head_dim % 2:
            raise ModelContractError(
                f"dim {self.dim} is not an even multiple of heads {self.heads}"
            )
        self._check_attention()

    def _check_attention(self) -> None:
        """kv_heads, qkv_bias and the window, normalized: ``kv_heads`` an int and
        ``sliding_layers`` a tuple (empty without a window) afterwards."""
        kv = self.heads if self.kv_heads is None else self.kv_heads
        if not is_count(kv) or not 1 <= kv <= self.heads or self.heads % kv:
            raise ModelContractError(
                f"`kv_heads` is {kv!r}; expected a divisor of heads ({self.heads})"
            )
        object.__setattr__(self, "kv_heads", kv)
        if not isinstance(self.qkv_bias, bool):
            raise ModelContractError(f"`qkv_bias` is {self.qkv_bias!r}; expected true or false")
        window = self.sliding_window
        if window is not None and (not is_count(window) or window < 1):
            raise ModelContractError(
                f"`sliding_window` is {window!r}; expected a positive number of positions or None"
            )
        every = tuple(range(self.layers))
        windowed = every if self.sliding_layers is None else tuple(self.sliding_layers)
        if (
            not all(map(is_count, windowed))
            or list(windowed) != sorted(set(windowed))
            or any(not 0 <= i < self.layers for i in windowed)
        ):
            raise ModelContractError(
                f"`sliding_layers` is {self.sliding_layers!r}; expected increasing layer "
                f"indices in 0..{self.layers - 1}"
            )
        object.__setattr__(self, "sliding_layers", windowed if window is not None else ())

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a text (none, one or several)."""
        eos = self.eos_token_id
        return () if eos is None else eos if isinstance(eos, tuple) else (eos,)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def segment_layers(self) -> list[range]:
        starts = (0, *self.exit_after[:-1])
        return [range(a, b) for a, b in zip(starts, self.exit_after)]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class Positions(NamedTuple):
    """What every layer of one call shares about positions P..P+T-1: the rotary cosines
    and sines [1, T, H + 2 KV, Dh] for the heads of q, k and v together (v's: 1 and 0, so
    that one rotation covers all three), the rotation's half swap [Dh, Dh], the causal mask
    [T, P+T], and, with a sliding window, the causal mask within the window (``local``).
    Computed once per call, not per layer: at batch 1 a decoder step costs mostly its node
    count, so an exported graph should hold these nodes once."""

    cos: torch.Tensor
    sin: torch.Tensor
    swap: torch.Tensor
    causal: torch.Tensor
    local: torch.Tensor | None = None


def positions(
    t: int,
    past: int,
    heads: int,
    head_dim: int,
    theta: float,
    device=None,
    *,
    kv_heads: int | None = None,
    window: int | None = None,
) -> Positions:
    """The ``Positions`` of ``t`` new tokens after ``past`` cached ones (Llama's rotary
    convention: the two halves of each head rotate together). ``kv_heads``: the key/value
    heads (default ``heads``); ``window``: the sliding window, which adds ``local``."""
    kv = heads if kv_heads is None else kv_heads
    half = head_dim // 2
    at = torch.arange(t, device=device) + past
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32, device=device) / half))
    freqs = at.float()[:, None] * inv_freq[None, :]  # [T, half]
    angles = torch.cat([freqs, freqs], dim=-1)[None, :, None, :]  # [1, T, 1, Dh]
    cos, sin = angles.cos(), angles.sin()
    rotated = (1, t, heads + kv, head_dim)  # q's and k's heads rotate, v's do not
    cos = torch.cat([cos.expand(rotated), torch.ones_like(cos).expand(1, t, kv, head_dim)], 2)
    sin = torch.cat([sin.expand(rotated), torch.zeros_like(sin).expand(1, t, kv, head_dim)], 2)
    # x @ swap = [-x2, x1] for x = [x1, x2]: one MatMul node instead of Split, Neg, Concat
    swap = np.zeros((head_dim, head_dim), dtype=np.float32)
    swap[np.arange(half) + half, np.arange(half)] = -1.0
    swap[np.arange(half), np.arange(half) + half] = 1.0
    seen = torch.arange(past + t, device=device)[None, :]
    causal = seen <= at[:, None]  # [T, P+T]
    # transformers' sliding window: a query at q sees the keys at q - window + 1 .. q
    local = None if window is None else causal & (seen > at[:, None] - window)
    return Positions(cos, sin, torch.from_numpy(swap).to(device), causal, local)


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, *, windowed: bool = False) -> None:
        super().__init__()
        d, h, kv = config.dim, config.heads, config.kv_heads
        self.heads, self.kv_heads, self.head_dim = h, kv, config.head_dim
        self.theta, self.window = config.rope_theta, config.sliding_window
        self.windowed = windowed  # this layer attends within the window
        self.input_layernorm = RMSNorm(d, config.eps)
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv * config.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv * config.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, config.eps)
        self.gate_proj = nn.Linear(d, config.hidden, bias=False)
        self.up_proj = nn.Linear(d, config.hidden, bias=False)
        self.down_proj = nn.Linear(config.hidden, d, bias=False)

    def positions(self, x: torch.Tensor, past_k: torch.Tensor) -> Positions:
        t, past = x.shape[1], past_k.shape[1]
        return positions(t, past, self.heads, self.head_dim, self.theta, x.device,
                         kv_heads=self.kv_heads, window=self.window)  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        at: Positions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` [B, T, D] at positions P..P+T-1, where P = past_k.shape[1]; returns the
        new hidden states and this layer's keys and values [B, T, KV, Dh] for the T new
        positions. ``at``: the call's ``Positions``, when the caller shares them across
        layers."""
        b, t, d = x.shape
        at = at if at is not None else self.positions(x, past_k)
        h = self.input_layernorm(x)
        qkv = self._qkv(h).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim)
        qkv = qkv * at.cos + (qkv @ at.swap) * at.sin  # rotary on q and k; v as it was
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
        keys = torch.cat([past_k, k], dim=1).transpose(1, 2)  # [B, KV, P+T, Dh]
        values = torch.cat([past_v, v], dim=1).transpose(1, 2)
        mask = at.local if self.windowed else at.causal
        x = x + self._attend(q.transpose(1, 2), keys, values, mask)
        h = self.post_attention_layernorm(x)
        gate, up = nn.functional.linear(
            h, torch.cat([self.gate_proj.weight, self.up_proj.weight])
        ).split(self.gate_proj.out_features, dim=-1)
        x = x + self.down_proj(nn.functional.silu(gate) * up)
        return x, k, v

    def _qkv(self, h: torch.Tensor) -> torch.Tensor:
        """q, k and v as one product (and gate and up in ``forward``): one MatMul node
        instead of three in the exported graph; ONNX Runtime folds the weights' Concat at
        load."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections]) if self.q_proj.bias is not None else None
        return nn.functional.linear(h, weight, bias)

    def _attend(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention of q [B, H, T, Dh] over keys and values [B, KV, P+T, Dh], through
        o_proj: [B, T, D]. o_proj runs head by head, summed over heads: no transpose back
        or reshape by shape. With fewer key/value heads, each serves a group of H / KV
        query heads (the group an axis of its own: the keys are never repeated)."""
        d, dh = self.o_proj.out_features, self.head_dim
        groups = self.heads // self.kv_heads
        heads: tuple[int, ...] = (self.heads,)  # the head axes: constants, not traced sizes
        if groups > 1:  # [B, KV, G, T, Dh] against [B, KV, 1, P+T, Dh]
            heads = (self.kv_heads, groups)
            q = q.reshape(q.shape[0], *heads, *q.shape[2:])
            keys, values = keys.unsqueeze(2), values.unsqueeze(2)
        scores = q @ keys.transpose(-2, -1) / math.sqrt(dh)
        scores = scores.masked_fill(~mask, float("-inf"))
        attended = torch.softmax(scores.float(), dim=-1) @ values  # [B, *heads, T, Dh]
        per_head = self.o_proj.weight.t().reshape(*heads, dh, d)
        return (attended @ per_head).sum(dim=1 if groups == 1 else (1, 2))


class MultiExitDecoder(nn.Module):
    """Embedding, layers, and one head shared by every exit."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        windowed = set(config.sliding_layers)
        self.layers = nn.ModuleList(
            DecoderLayer(config, windowed=i in windowed) for i in range(config.layers)
        )
        self.norm = RMSNorm(config.dim, config.eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

    def forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits [B, T, V] over a whole sequence (training, no cache)."""
        x = self.embed_tokens(ids)
        empty = x.new_zeros(x.shape[0], 0, self.config.kv_heads, self.config.head_dim)
        exits, bounds = [], set(self.config.exit_after)
        at = self.layers[0].positions(x, empty)
        for i, layer in enumerate(self.layers):
            x, _, _ = layer(x, empty, empty, at)
            if i + 1 in bounds:
                exits.append(self.head(x))
        return exits


class SegmentGraph(nn.Module):
    """Segment ``index`` as exported: (ids or hidden, past k/v per layer) -> (hidden, new
    k/v per layer). The shared head is its own graph (``HeadGraph``)."""

    def __init__(self, model: MultiExitDecoder, index: int) -> None:
        super().__init__()
        self.first = index == 0
        self.embed = model.embed_tokens if self.first else None
        span = model.config.segment_layers()[index]
        self.layers = nn.ModuleList(model.layers[i] for i in span)

    def forward(self, x: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.embed(x) if self.first else x
        new: list[torch.Tensor] = []
        at = self.layers[0].positions(hidden, past[0])
        for j, layer in enumerate(self.layers):
            hidden, k, v = layer(hidden, past[2 * j], past[2 * j + 1], at)
            new += [k, v]
        return (hidden, *new)


class HeadGraph(nn.Module):
    """The head every exit shares: hidden [B, T, D] -> logits [B, T, V] and the max softmax
    probability [B, T] (the exit's confidence)."""

    def __init__(self, model: MultiExitDecoder) -> None:
        super().__init__()
        self.norm, self.lm_head = model.norm, model.lm_head

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm_head(self.norm(hidden))
        return logits, torch.softmax(logits, dim=-1).amax(dim=-1)


def early_exit_loss(
    exits: Sequence[torch.Tensor], targets: torch.Tensor, scale: float = 1.0, distill: float = 0.0
) -> torch.Tensor:
    """LayerSkip-style: each exit's next-token cross-entropy, weighted rising with depth
    (exit e of E weighs ``scale * (e + 1) / E``, the last 1), normalized by the weights.

    ``distill`` adds self-distillation: each early exit's KL divergence from the last
    exit's distribution (held fixed), per token, averaged over the early exits, times
    ``distill``. A draft that agrees with the full model is what self-speculative decoding
    accepts, right or wrong; on the demo model (600 steps) it raised the first exit's
    agreement with the last on generated text from 81 % to 89 %, and the last exit's
    held-out cross-entropy from 1.52 to 1.61 nats per byte (the trunk is shared).
    """
    weights = [scale * (e + 1) / len(exits) for e in range(len(exits) - 1)] + [1.0]
    losses = [
        nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        for logits in exits
    ]
    loss = sum(w * x for w, x in zip(weights, losses)) / sum(weights)
    if distill and len(exits) > 1:
        teacher = torch.softmax(exits[-1].detach(), dim=-1)
        divergences = [
            nn.functional.kl_div(torch.log_softmax(e, dim=-1), teacher, reduction="batchmean")
            / e.shape[1]
            for e in exits[:-1]
        ]
        loss = loss + distill * sum(divergences) / len(divergences)
    return loss
