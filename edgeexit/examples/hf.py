"""Hugging Face ``transformers`` encoders as multi-exit models: DeeBERT-style exits on [CLS].

``multi_exit_encoder(hf_model, num_labels)`` turns a BERT, RoBERTa, DistilBERT or ALBERT
encoder (``BertModel``, ``...ForSequenceClassification``, ...) into a ``MultiExit`` with an
exit after every layer (or after the layers ``exit_after=`` numbers); ``multi_exit_vit``
does the same for a ViT. Segment 0's forward names the bundle's inputs: ``input_ids`` and
``attention_mask``, or ``pixel_values``.
What it takes care of, which a user would otherwise have to know:

- the additive attention mask is built once, in segment 0, from the 0/1 ``attention_mask``
  and carried with the hidden states (a Tensor always: transformers' own mask helpers
  return None for a batch without padding, and changed between versions);
- attention runs the ``eager`` implementation, which exports to ONNX op by op;
- ALBERT's shared layer groups are applied as its encoder applies them.

The exits are new (random) heads, a pooler (dense + tanh) and a classifier on the [CLS]
hidden state, as DeeBERT attaches them: train them with ``train_multi_exit`` (all exits
at once, or with ``freeze_backbone=True`` for the heads only). Needs the ``hf`` extra
(``transformers``), never on a device: a bundle exported from these is plain ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeexit.errors import InputError
from edgeexit.export.model import MultiExit


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, 1, seq]: 0 where a token is attended to, the dtype's minimum where not."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class ClsExit(nn.Module):
    """DeeBERT's exit: pooler (dense + tanh) then a classifier, on the [CLS] position."""

    def __init__(self, hidden: int, num_labels: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        cls = self.norm(hidden[:, 0])  # the mask rides along in the carry; [CLS] is never masked
        return self.classifier(torch.tanh(self.pooler(cls)))


class _Stem(nn.Module):
    """Segment 0: embeddings, the mask built once, the first layers (its forward names the
    bundle's inputs ``input_ids`` and ``attention_mask``)."""

    def __init__(self, embed: nn.Module, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.embed(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = _hidden(layer(hidden, mask))
        return hidden, mask


class _Layers(nn.Module):
    """Segment i >= 1: encoder layers over (hidden, mask)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor):
        for layer in self.layers:
            hidden = _hidden(layer(hidden, mask))
        return hidden, mask


def multi_exit_encoder(
    hf_model: nn.Module, num_labels: int, exit_after: Sequence[int] | None = None
) -> MultiExit:
    """A BERT / RoBERTa / DistilBERT / ALBERT encoder as a MultiExit: inputs
    ``(input_ids, attention_mask)`` int64 [batch, seq], an exit after every layer, or after
    the layers ``exit_after`` numbers (1-based; the last layer always has one)."""
    base = _base(hf_model)
    _eager(hf_model)
    kind = base.config.model_type
    hidden = base.config.hidden_size
    if kind in ("bert", "roberta"):
        layers = list(base.encoder.layer)
        embed = base.embeddings
    elif kind == "distilbert":
        layers = list(base.transformer.layer)
        embed = base.embeddings
    elif kind == "albert":
        config = base.config
        per_group = config.num_hidden_layers // config.num_hidden_groups
        groups = base.encoder.albert_layer_groups
        layers = [groups[i // per_group] for i in range(config.num_hidden_layers)]
        embed = nn.Sequential(base.embeddings, base.encoder.embedding_hidden_mapping_in)
    else:
        raise InputError(
            f"model type {kind!r}: expected bert, roberta, distilbert or albert "
            "(multi_exit_vit for ViT)"
        )
    first, *rest = _grouped(layers, exit_after)
    segments = [_Stem(embed, first), *(_Layers(group) for group in rest)]
    return MultiExit(segments, [ClsExit(hidden, num_labels) for _ in segments])


def multi_exit_vit(
    hf_model: nn.Module, num_labels: int, exit_after: Sequence[int] | None = None
) -> MultiExit:
    """A ViT as a MultiExit: input ``pixel_values`` float [batch, channels, H, W], an exit
    (final layer norm, then DeeBERT's head on [CLS]) after every layer, or after those
    ``exit_after`` numbers (as ``multi_exit_encoder``)."""
    base = _base(hf_model)
    _eager(hf_model)
    if base.config.model_type != "vit":
        raise InputError(f"model type {base.config.model_type!r}: expected vit")
    # transformers 5 keeps ViT's layers on the model, older versions on its encoder
    layers = list(base.layers if hasattr(base, "layers") else base.encoder.layer)
    hidden = base.config.hidden_size
    first, *rest = _grouped(layers, exit_after)
    segments = [_PatchStem(base.embeddings, first), *(_Unmasked(group) for group in rest)]
    norm = base.layernorm
    return MultiExit(segments, [ClsExit(hidden, num_labels, norm) for _ in segments])


class _PatchStem(nn.Module):
    """ViT's segment 0: patch embeddings, then the first layers (its forward names the
    bundle's input ``pixel_values``)."""

    def __init__(self, embed: nn.Module, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(pixel_values)
        for layer in self.layers:
            hidden = _hidden(layer(hidden))
        return hidden


class _Unmasked(nn.Module):
    """ViT's segment i >= 1: layers over the hidden states (no mask: every patch counts)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = _hidden(layer(hidden))
        return hidden


def _grouped(layers: list[nn.Module], exit_after: Sequence[int] | None) -> list[list[nn.Module]]:
    """The layers cut after each layer number in ``exit_after`` (1-based) and after the
    last: one group per segment."""
    if exit_after is None:
        return [[layer] for layer in layers]
    cuts = exit_cuts(exit_after, len(layers))
    return [layers[start:end] for start, end in zip([0, *cuts[:-1]], cuts)]


def exit_cuts(exit_after: Sequence[int], count: int) -> list[int]:
    """The layer counts after which an exit reads, of ``count`` layers: ``exit_after``
    (1-based layer numbers, increasing) and the last layer, which always has one."""
    cuts = list(exit_after)
    whole = all(isinstance(n, int) and not isinstance(n, bool) for n in cuts)
    if not cuts or not whole or cuts != sorted(set(cuts)) or not 1 <= cuts[0] <= cuts[-1] <= count:
        raise InputError(
            f"`exit_after` is {cuts!r}; expected increasing layer numbers in 1..{count} (an "
            "exit after each; the last layer always has one)"
        )
    return cuts if cuts[-1] == count else [*cuts, count]


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """A layer's hidden states: transformers 5 returns them, 4.x a tuple that starts with them."""
    return output[0] if isinstance(output, tuple) else output


def _base(hf_model: nn.Module) -> nn.Module:
    """The bare encoder inside a task model (``model.bert``, ``model.vit``...)."""
    prefix = getattr(hf_model, "base_model_prefix", "")
    return getattr(hf_model, prefix, hf_model) if prefix else hf_model


def _eager(hf_model: nn.Module) -> None:
    """Attention op by op: exports to ONNX the same on every transformers version."""
    if hasattr(hf_model, "set_attn_implementation"):
        hf_model.set_attn_implementation("eager")
    else:  # older transformers
        hf_model.config._attn_implementation = "eager"
