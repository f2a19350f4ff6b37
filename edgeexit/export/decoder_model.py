"""The decoder contract: a causal language model whose exits share one LM head.

A ``MultiExitDecoder`` is a Llama-style decoder (RMSNorm, rotary positions, SwiGLU MLP, no
biases) whose layers are grouped into segments by ``exit_after`` (the layer counts after
which an exit reads the hidden state). Every exit reads it through the same head (final
norm + unembedding), as Sorted LLaMA and LayerSkip do, so the bundle stores the head once.

Each layer takes its own past keys and values and returns only the new ones: the runtime
keeps every cache pre-allocated, writes the new rows in place and rolls back by moving a
length, never by concatenating. Caches are laid out ``[batch, position, head, head_dim]``
so that a prefix of positions is one contiguous block (batch 1).

The same weights load into transformers' ``LlamaForCausalLM`` (``edgeexit.examples.hf``,
``llama_to_decoder``/``decoder_to_llama``), the peer measured against in benchmarks.
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
    and sines [1, T, 3H, Dh] for the heads of q, k and v together (v's: 1 and 0, so that
    one rotation covers all three), the rotation's half swap [Dh, Dh], and the causal mask
    [T, P+T]. Computed once per call, not per layer: at batch 1 a decoder step costs
    mostly its node count, so an exported graph should hold these nodes once."""

    cos: torch.Tensor
    sin: torch.Tensor
    swap: torch.Tensor
    causal: torch.Tensor


def positions(t: int, past: int, heads: int, head_dim: int, theta: float, device=None) -> Positions:
    """The ``Positions`` of ``t`` new tokens after ``past`` cached ones (Llama's rotary
    convention: the two halves of each head rotate together)."""
    half = head_dim // 2
    at = torch.arange(t, device=device) + past
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32, device=device) / half))
    freqs = at.float()[:, None] * inv_freq[None, :]  # [T, half]
    angles = torch.cat([freqs, freqs], dim=-1)[None, :, None, :]  # [1, T, 1, Dh]
    cos, sin = angles.cos(), angles.sin()
    rotated = (1, t, 2 * heads, head_dim)  # q's and k's heads rotate, v's do not
    cos = torch.cat([cos.expand(rotated), torch.ones_like(cos).expand(1, t, heads, head_dim)], 2)
    sin = torch.cat([sin.expand(rotated), torch.zeros_like(sin).expand(1, t, heads, head_dim)], 2)
    # x @ swap = [-x2, x1] for x = [x1, x2]: one MatMul node instead of Split, Neg, Concat
    swap = np.zeros((head_dim, head_dim), dtype=np.float32)
    swap[np.arange(half) + half, np.arange(half)] = -1.0
    swap[np.arange(half), np.arange(half) + half] = 1.0
    causal = torch.arange(past + t, device=device)[None, :] <= at[:, None]  # [T, P+T]
    return Positions(cos, sin, torch.from_numpy(swap).to(device), causal)


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        d, h = config.dim, config.heads
        self.heads, self.head_dim, self.theta = h, config.head_dim, config.rope_theta
        self.input_layernorm = RMSNorm(d, config.eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, config.eps)
        self.gate_proj = nn.Linear(d, config.hidden, bias=False)
        self.up_proj = nn.Linear(d, config.hidden, bias=False)
        self.down_proj = nn.Linear(config.hidden, d, bias=False)

    def positions(self, x: torch.Tensor, past_k: torch.Tensor) -> Positions:
        t, past = x.shape[1], past_k.shape[1]
        return positions(t, past, self.heads, self.head_dim, self.theta, x.device)

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        at: Positions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` [B, T, D] at positions P..P+T-1, where P = past_k.shape[1]; returns the
        new hidden states and this layer's keys and values for the T new positions.
        ``at``: the call's ``Positions``, when the caller shares them across layers."""
        b, t, d = x.shape
        at = at if at is not None else self.positions(x, past_k)
        h = self.input_layernorm(x)
        # q, k and v as one product (and gate and up below): one MatMul node instead of
        # three in the exported graph; ONNX Runtime folds the weights' Concat at load.
        qkv = nn.functional.linear(
            h, torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        )
        qkv = qkv.view(b, t, 3 * self.heads, self.head_dim)
        qkv = qkv * at.cos + (qkv @ at.swap) * at.sin  # rotary on q and k; v as it was
        q, k, v = qkv.split(self.heads, dim=2)
        keys = torch.cat([past_k, k], dim=1).transpose(1, 2)  # [B, H, P+T, Dh]
        values = torch.cat([past_v, v], dim=1).transpose(1, 2)
        scores = q.transpose(1, 2) @ keys.transpose(2, 3) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~at.causal, float("-inf"))
        attended = torch.softmax(scores.float(), dim=-1) @ values  # [B, H, T, Dh]
        # o_proj head by head, summed over heads: no transpose back or reshape by shape
        per_head = self.o_proj.weight.t().reshape(self.heads, self.head_dim, d)
        x = x + (attended @ per_head).sum(dim=1)
        h = self.post_attention_layernorm(x)
        gate, up = nn.functional.linear(
            h, torch.cat([self.gate_proj.weight, self.up_proj.weight])
        ).split(self.gate_proj.out_features, dim=-1)
        x = x + self.down_proj(nn.functional.silu(gate) * up)
        return x, k, v


class MultiExitDecoder(nn.Module):
    """Embedding, layers, and one head shared by every exit."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.dim, config.eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

    def forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits [B, T, V] over a whole sequence (training, no cache)."""
        x = self.embed_tokens(ids)
        empty = x.new_zeros(x.shape[0], 0, self.config.heads, self.config.head_dim)
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
