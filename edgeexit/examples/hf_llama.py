"""transformers' Llama, Mistral and Qwen2 causal LMs as a ``MultiExitDecoder``, and back.

``llama_to_decoder(hf_model, exit_after)`` reads a ``LlamaForCausalLM``,
``MistralForCausalLM`` or ``Qwen2ForCausalLM`` (config-built or trained) into edgeexit's
decoder contract, weight for weight, with exits after the given layer counts sharing the
model's own final norm and LM head (Sorted LLaMA, LayerSkip); ``decoder_to_llama`` goes the
other way for a plain Llama, so that transformers' own ``generate(assistant_early_exit=k)``
runs on the very weights a bundle was exported from.

What the three families differ in is carried over exactly: grouped-query attention (the
caches hold ``num_key_value_heads``), Qwen2's biases on q, k and v, tied embeddings, the
rotary base, the norms' eps, and the sliding window (Mistral's on every layer, Qwen2's on
the layers its ``layer_types`` name; dropped where it is at least the bundle's positions,
where it masks nothing). What the decoder would not compute exactly (scaled rotary
positions, another activation, a head size other than hidden size / heads, Llama's
attention or MLP biases) is refused in one line rather than converted into another model.
Needs the ``hf`` extra (``transformers``), never on a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from edgeexit.errors import ModelContractError
from edgeexit.examples.hf_families import DECODERS as FAMILIES
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder

_LAYER = {  # edgeexit's name -> Llama's, inside a layer
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "o_proj.weight": "self_attn.o_proj.weight",
    "gate_proj.weight": "mlp.gate_proj.weight",
    "up_proj.weight": "mlp.up_proj.weight",
    "down_proj.weight": "mlp.down_proj.weight",
}
_BIASES = {  # Qwen2's q, k and v projections have biases
    f"{p}_proj.bias": f"self_attn.{p}_proj.bias" for p in ("q", "k", "v")
}
_FULL, _SLIDING = "full_attention", "sliding_attention"  # transformers' layer_types

# What decides where transformers stops generating, read from the model unless given.
FROM_MODEL = "from the model"
# The MLP's activation edgeexit's decoder computes (SwiGLU's gate): transformers' names for it.
SILU = ("silu", "swish")


def llama_to_decoder(
    hf_model,
    exit_after: tuple[int, ...],
    *,
    eos_token_id: int | Sequence[int] | None | str = FROM_MODEL,
    max_positions: int | None = None,
) -> MultiExitDecoder:
    """``hf_model`` (a Llama, Mistral or Qwen2 causal LM) as a ``MultiExitDecoder`` with
    exits after ``exit_after`` layers. ``eos_token_id``: the ids that end a text, by
    default the model's own (its generation config's, which transformers' ``generate``
    stops at, else its config's; several are kept, any of them ends a text); None for
    none. ``max_positions``: the longest text (prompt and generated tokens) the bundle's
    caches hold, at most the model's ``max_position_embeddings`` (the default)."""
    eos = _model_eos(hf_model) if eos_token_id is FROM_MODEL else eos_token_id
    if isinstance(eos, Sequence) and not isinstance(eos, str):  # a list from a config
        eos = tuple(eos)
    config = decoder_config(hf_model.config, exit_after, max_positions=max_positions)
    config = replace(config, eos_token_id=eos)
    model = MultiExitDecoder(config)
    model.load_state_dict(_weights(hf_model.state_dict(), config, _family(hf_model.config)))
    return model.eval()


def decoder_config(
    c, exit_after: Sequence[int], *, max_positions: int | None = None
) -> DecoderConfig:
    """The ``DecoderConfig`` of a transformers config ``c``, from the config alone (so
    that whatever ``llama_to_decoder`` refuses is refused before a weight is loaded),
    without end-of-text ids (the model's generation config has them)."""
    family = _family(c)
    _check_supported(c, family)
    positions = _positions(c, max_positions)
    window, windowed = _window(c, family, positions)
    return DecoderConfig(
        vocab_size=c.vocab_size, dim=c.hidden_size, heads=c.num_attention_heads,
        layers=c.num_hidden_layers, hidden=c.intermediate_size, exit_after=tuple(exit_after),
        max_positions=positions, rope_theta=_rope_theta(c), eps=c.rms_norm_eps,
        eos_token_id=None, kv_heads=c.num_key_value_heads or c.num_attention_heads,
        qkv_bias=family == "qwen2", sliding_window=window, sliding_layers=windowed,
    )  # fmt: skip


def _weights(theirs: dict, config: DecoderConfig, family: str) -> dict[str, torch.Tensor]:
    """The decoder's state dict from the transformers model's; a weight it lacks is refused."""

    def weight(name: str) -> torch.Tensor:
        if name not in theirs:
            raise ModelContractError(f"the {family} model has no weight {name!r}")
        return theirs[name]

    embedding = weight("model.embed_tokens.weight")
    ours = {
        "embed_tokens.weight": embedding,
        "norm.weight": weight("model.norm.weight"),
        "lm_head.weight": theirs.get("lm_head.weight", embedding),  # tied in some models
    }
    per_layer = {**_LAYER, **(_BIASES if config.qkv_bias else {})}
    for i in range(config.layers):
        for mine, name in per_layer.items():
            ours[f"layers.{i}.{mine}"] = weight(f"model.layers.{i}.{name}")
    return ours


def decoder_to_llama(model: MultiExitDecoder):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    if c.qkv_bias or c.sliding_layers:
        raise ModelContractError(
            "this decoder has q/k/v biases or a sliding window: it is a Qwen2 or a Mistral, "
            "not a Llama"
        )
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.max_positions, rms_norm_eps=c.eps, rope_theta=c.rope_theta,
        tie_word_embeddings=False, eos_token_id=_llama_eos(c.eos_token_ids), bos_token_id=None,
    )  # fmt: skip
    hf = LlamaForCausalLM(config)
    ours = model.state_dict()
    theirs = {
        "model.embed_tokens.weight": ours["embed_tokens.weight"],
        "model.norm.weight": ours["norm.weight"],
        "lm_head.weight": ours["lm_head.weight"],
    }
    for i in range(c.layers):
        for mine, llama in _LAYER.items():
            theirs[f"model.layers.{i}.{llama}"] = ours[f"layers.{i}.{mine}"]
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise ModelContractError(f"weights do not map onto Llama: {missing or unexpected}")
    return hf.eval()


def _family(c) -> str:
    family = getattr(c, "model_type", None)
    if family not in FAMILIES:
        raise ModelContractError(
            f"a model of type {family!r}; edgeexit converts {', '.join(FAMILIES)} decoders"
        )
    return family


def _check_supported(c, family: str) -> None:
    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ModelContractError(f"{name} with attention or MLP biases is not supported")
    rope = _rope_parameters(c)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ModelContractError(
            f"{name}'s rotary positions are scaled ({kind!r}); edgeexit's decoder computes "
            "the default rotary positions only"
        )
    act = getattr(c, "hidden_act", "silu")
    if act not in SILU:
        raise ModelContractError(
            f"{name}'s hidden_act is {act!r}; edgeexit's decoder computes SiLU (SwiGLU) only"
        )
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None and head_dim * c.num_attention_heads != c.hidden_size:
        raise ModelContractError(
            f"{name}'s head_dim is {head_dim}, not hidden_size / num_attention_heads "
            f"({c.hidden_size} / {c.num_attention_heads}); edgeexit's decoder supports only that"
        )


def _positions(c, wanted: int | None) -> int:
    """The bundle's positions: the model's, or fewer (the caches and the head's buffers
    grow with them: a 32k-position model rarely needs them all on a device)."""
    most = c.max_position_embeddings
    if wanted is None:
        return most
    if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= most:
        raise ModelContractError(
            f"`max_positions` is {wanted!r}; expected 1..{most} (the model's "
            "max_position_embeddings)"
        )
    return wanted


def _window(c, family: str, positions: int) -> tuple[int | None, tuple[int, ...] | None]:
    """The sliding window and the layers it applies to, as transformers computes them:
    Mistral's on every layer, Qwen2's on the layers ``layer_types`` marks sliding (Llama
    has none). A window of at least ``positions`` masks nothing: dropped."""
    window = getattr(c, "sliding_window", None) if family != "llama" else None
    layers = None  # every layer
    if family == "qwen2":
        if not getattr(c, "use_sliding_window", False):
            window = None  # as Qwen2Config sets it (a config from before may still hold one)
        types = list(getattr(c, "layer_types", None) or _qwen2_layer_types(c, window))
        unknown = [t for t in types if t not in (_FULL, _SLIDING)]
        if unknown:
            raise ModelContractError(
                f"Qwen2's layer_types holds {unknown[0]!r}; edgeexit's decoder computes "
                f"{_FULL!r} and {_SLIDING!r} layers"
            )
        layers = tuple(i for i, t in enumerate(types) if t == _SLIDING)
    if window is None or window >= positions or layers == ():
        return None, None
    return window, layers


def _qwen2_layer_types(c, window: int | None) -> list[str]:
    """Qwen2's layer types where its config predates ``layer_types`` (transformers < 4.53),
    as Qwen2Config derives them: sliding from ``max_window_layers`` on."""
    start = getattr(c, "max_window_layers", c.num_hidden_layers)
    sliding = window is not None
    return [_SLIDING if sliding and i >= start else _FULL for i in range(c.num_hidden_layers)]


def _model_eos(hf_model) -> int | list[int] | None:
    """Where transformers' ``generate`` stops: the generation config's end-of-text ids,
    else the model config's."""
    generation = getattr(hf_model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    return eos if eos is not None else getattr(hf_model.config, "eos_token_id", None)


def _rope_parameters(config) -> dict:
    """transformers 5's ``rope_parameters`` (4.x: ``rope_scaling`` and ``rope_theta``)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return params if isinstance(params, dict) else {}


def _rope_theta(config) -> float:
    params = _rope_parameters(config)
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _llama_eos(ids: tuple[int, ...]) -> int | list[int] | None:
    return None if not ids else ids[0] if len(ids) == 1 else list(ids)
