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

import torch
from torch import nn

from edgeexit.errors import ModelContractError


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
    eos_token_id: int | None = 256

    def __post_init__(self) -> None:
        bounds = list(self.exit_after)
        if not bounds or bounds != sorted(set(bounds)) or bounds[0] < 1:
            raise ModelContractError(f"exit_after {self.exit_after} must rise from 1")
        if bounds[-1] != self.layers:
            raise ModelContractError(
                f"exit_after ends at {bounds[-1]}; expected the last layer ({self.layers})"
            )
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ModelContractError(
                f"eos_token_id {self.eos_token_id} is outside the vocabulary ({self.vocab_size})"
            )
        if self.dim % self.heads or self.head_dim % 2:
            raise ModelContractError(
                f"dim {self.dim} is not an even multiple of heads {self.heads}"
            )

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


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary positions on ``x`` [B, T, H, Dh] at ``positions`` [T] (Llama's convention:
    the two halves of each head rotate together)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32) / half))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, half]
    angles = torch.cat([freqs, freqs], dim=-1)[None, :, None, :]  # [1, T, 1, Dh]
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * angles.cos() + rotated * angles.sin()


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

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` [B, T, D] at positions P..P+T-1, where P = past_k.shape[1]; returns the
        new hidden states and this layer's keys and values for the T new positions."""
        b, t, _ = x.shape
        past = past_k.shape[1]
        positions = torch.arange(t, device=x.device) + past
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(h).view(b, t, self.heads, self.head_dim)
        v = self.v_proj(h).view(b, t, self.heads, self.head_dim)
        q, k = rotary(q, positions, self.theta), rotary(k, positions, self.theta)
        keys = torch.cat([past_k, k], dim=1).transpose(1, 2)  # [B, H, P+T, Dh]
        values = torch.cat([past_v, v], dim=1).transpose(1, 2)
        scores = q.transpose(1, 2) @ keys.transpose(2, 3) / math.sqrt(self.head_dim)
        key_pos = torch.arange(past + t, device=x.device)
        causal = key_pos[None, :] <= positions[:, None]  # [T, P+T]
        scores = scores.masked_fill(~causal, float("-inf"))
        attended = torch.softmax(scores.float(), dim=-1) @ values  # [B, H, T, Dh]
        x = x + self.o_proj(attended.transpose(1, 2).reshape(b, t, -1))
        h = self.post_attention_layernorm(x)
        x = x + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))
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
        for i, layer in enumerate(self.layers):
            x, _, _ = layer(x, empty, empty)
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
        for j, layer in enumerate(self.layers):
            hidden, k, v = layer(hidden, past[2 * j], past[2 * j + 1])
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
    exits: Sequence[torch.Tensor], targets: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """LayerSkip-style: each exit's next-token cross-entropy, weighted rising with depth
    (exit e of E weighs ``scale * (e + 1) / E``, the last 1), normalized by the weights."""
    weights = [scale * (e + 1) / len(exits) for e in range(len(exits) - 1)] + [1.0]
    losses = [
        nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        for logits in exits
    ]
    return sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)
