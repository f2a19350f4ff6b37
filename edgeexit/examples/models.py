"""Example multi-exit models, one per carry/head shape the contract allows:

- ``digits_resnet``: a residual CNN for 1x8x8 digits in 4 segments (Tensor carry);
- ``digits_cnn``: a plain CNN, no residuals, 3 segments;
- ``digits_three_exit``: a cheap first exit, then two heavy stages (demo, calibration);
- ``digits_two_scale``: a carry of two feature maps at 8x8 and 4x4;
- ``digits_gated``: heads returning ``(logits, gate)`` with a learned exit gate;
- ``tiny_bert``: a BERT-like encoder with two int64 inputs (input_ids, attention_mask) and a
  carry of (hidden, mask); ``torch_attention=True`` uses ``nn.MultiheadAttention``.

Every builder is ``@checkpointable``, so ``edgeexit.save`` can record how to rebuild it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeexit.export.checkpoint import checkpointable
from edgeexit.export.model import MultiExit


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    """The ResNet basic block; a strided 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, stride), nn.ReLU(), _conv_bn(c_out, c_out))
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class PoolHead(nn.Module):
    """Global average pool + linear: the usual lightweight exit head."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@checkpointable
def digits_resnet(num_classes: int = 10, width: int = 16) -> MultiExit:
    """A multi-exit ResNet for 1x8x8 images: 4 segments, exits after each."""
    w = width
    segments = [
        nn.Sequential(_conv_bn(1, w), nn.ReLU(), BasicBlock(w, w)),
        BasicBlock(w, w),
        BasicBlock(w, 2 * w, stride=2),
        BasicBlock(2 * w, 2 * w),
    ]
    heads = [PoolHead(c, num_classes) for c in (w, w, 2 * w, 2 * w)]
    return MultiExit(segments, heads)


@checkpointable
def digits_cnn(num_classes: int = 10, width: int = 16) -> MultiExit:
    """A plain CNN (conv-ReLU stacks, no residuals) in 3 segments with flatten+linear heads."""
    w = width

    def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU())

    segments = [conv(1, w), conv(w, 2 * w, stride=2), conv(2 * w, 2 * w, stride=2)]
    heads = [
        nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, num_classes))
        for c, s in ((w, 8), (2 * w, 4), (2 * w, 2))
    ]
    return MultiExit(segments, heads)


@checkpointable
def digits_three_exit(num_classes: int = 10, width: int = 64) -> MultiExit:
    """A cheap conv + linear exit, then two heavy conv stages with their exits: the shape of
    a real early-exit network, where the later segments carry most of the compute (the demo
    and the calibration benchmark use it)."""
    w = width
    segments = [
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        nn.Sequential(
            nn.Conv2d(16, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU()
        ),
        nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
        ),
    ]
    exits = [
        nn.Sequential(nn.Flatten(), nn.Linear(16 * 64, num_classes)),
        nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(w * 16, num_classes)),
        nn.Sequential(nn.Flatten(), nn.Linear(w * 16, num_classes)),
    ]
    return MultiExit(segments, exits)


class TwoScaleStem(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.fine = nn.Sequential(_conv_bn(1, w), nn.ReLU())
        self.coarse = nn.Sequential(_conv_bn(w, 2 * w, stride=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.fine(x)
        return fine, self.coarse(fine)


class TwoScaleBlock(nn.Module):
    """Updates a (fine 8x8, coarse 4x4) pair, each scale informed by the other."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.fine = BasicBlock(w, w)
        self.coarse = BasicBlock(2 * w, 2 * w)
        self.down = nn.Conv2d(w, 2 * w, 1, stride=2)
        self.up = nn.Conv2d(2 * w, w, 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor):
        up = nn.functional.interpolate(self.up(coarse), scale_factor=2.0, mode="nearest")
        return self.fine(fine + up), self.coarse(coarse + self.down(fine))


class TwoScaleHead(nn.Module):
    def __init__(self, w: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * w, num_classes)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([fine.mean(dim=(2, 3)), coarse.mean(dim=(2, 3))], dim=1))


@checkpointable
def digits_two_scale(num_classes: int = 10, width: int = 8) -> MultiExit:
    """A carry of two feature maps at two resolutions (8x8 and 4x4), 3 segments."""
    segments = [TwoScaleStem(width), TwoScaleBlock(width), TwoScaleBlock(width)]
    return MultiExit(segments, [TwoScaleHead(width, num_classes) for _ in segments])


class GatedHead(nn.Module):
    """Logits plus a learned exit gate in (0, 1) (JEI-DNN / DeeDiff style)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)
        self.gate = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = x.mean(dim=(2, 3))
        return self.fc(feat), torch.sigmoid(self.gate(feat)).squeeze(-1)


@checkpointable
def digits_gated(num_classes: int = 10, width: int = 16) -> MultiExit:
    """A residual CNN whose 3 heads return ``(logits, gate)``."""
    w = width
    segments = [
        nn.Sequential(_conv_bn(1, w), nn.ReLU()),
        BasicBlock(w, w),
        BasicBlock(w, 2 * w, stride=2),
    ]
    return MultiExit(segments, [GatedHead(c, num_classes) for c in (w, w, 2 * w)])


class EncoderLayer(nn.Module):
    """A post-norm transformer encoder layer over ``(hidden, mask)``; returns the same pair.

    The hand-written attention exports with the fast TorchScript exporter;
    ``torch_attention=True`` uses ``nn.MultiheadAttention`` (which needs the dynamo exporter).
    """

    def __init__(self, dim: int, heads: int, torch_attention: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True) if torch_attention else None
        self.qkv = None if torch_attention else nn.Linear(dim, 3 * dim)
        self.proj = None if torch_attention else nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def attend(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.mha is not None:
            return self.mha(h, h, h, key_padding_mask=mask == 0, need_weights=False)[0]
        b, t, d = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        logits = logits.masked_fill(mask[:, None, None, :] == 0, -1e4)
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(h + self.attend(h, mask))
        return self.norm2(h + self.ff(h)), mask


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.norm(self.tokens(input_ids) + self.positions), attention_mask


class FirstLayer(nn.Module):
    """Segment 0: embeddings and the first encoder layer, from (input_ids, attention_mask)."""

    def __init__(self, embeddings: Embeddings, layer: EncoderLayer) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.layer = layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.layer(*self.embeddings(input_ids, attention_mask))


class MeanPoolHead(nn.Module):
    """Masked mean of the hidden states, then a small classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, num_classes))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(h.dtype).unsqueeze(-1)
        return self.fc((h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0))


@checkpointable
def tiny_bert(
    num_classes: int = 2,
    vocab_size: int = 32,
    seq_len: int = 16,
    dim: int = 32,
    heads: int = 2,
    layers: int = 3,
    torch_attention: bool = False,
) -> MultiExit:
    """A small BERT-like encoder: inputs (input_ids, attention_mask) int64 [batch, seq_len],
    carry (hidden, mask), one exit per layer."""
    blocks = [EncoderLayer(dim, heads, torch_attention) for _ in range(layers)]
    segments = [FirstLayer(Embeddings(vocab_size, seq_len, dim), blocks[0]), *blocks[1:]]
    return MultiExit(segments, [MeanPoolHead(dim, num_classes) for _ in segments])


def example_inputs(name: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs for the example model ``name``."""
    gen = torch.Generator().manual_seed(seed)
    if name == "tiny_bert":
        ids = torch.randint(1, 32, (batch, 16), generator=gen)
        mask = torch.ones(batch, 16, dtype=torch.int64)
        mask[:, 12:] = 0
        return ids * mask, mask
    return (torch.rand(batch, 1, 8, 8, generator=gen),)


EXAMPLE_MODELS = {
    "digits_resnet": digits_resnet,
    "digits_cnn": digits_cnn,
    "digits_two_scale": digits_two_scale,
    "digits_gated": digits_gated,
    "tiny_bert": tiny_bert,
}
