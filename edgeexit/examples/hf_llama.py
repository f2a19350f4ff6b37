"""transformers' ``LlamaForCausalLM`` as a ``MultiExitDecoder``, and back, weight for weight.

``llama_to_decoder(hf_model, exit_after)`` reads a Llama-style causal LM (config-built or
trained) into edgeexit's decoder contract, with exits after the given layer counts sharing
the model's own final norm and LM head (Sorted LLaMA, LayerSkip); ``decoder_to_llama``
goes the other way, so that transformers' own ``generate(assistant_early_exit=k)`` runs on
the very weights a bundle was exported from. Grouped-query attention (fewer key/value
heads) is expanded to one key/value head per query head: the same attention, exactly.
Needs the ``hf`` extra (``transformers``), never on a device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgeexit.errors import ModelContractError
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


# What decides where transformers stops generating, read from the model unless given.
FROM_MODEL = "from the model"
# The MLP's activation edgeexit's decoder computes (SwiGLU's gate): transformers' names for it.
SILU = ("silu", "swish")


def llama_to_decoder(
    hf_model,
    exit_after: tuple[int, ...],
    *,
    eos_token_id: int | Sequence[int] | None | str = FROM_MODEL,
) -> MultiExitDecoder:
    """``hf_model`` as a ``MultiExitDecoder`` with exits after ``exit_after`` layers.
    ``eos_token_id``: the ids that end a text, by default the model's own (its generation
    config's, which transformers' ``generate`` stops at, else its config's; several are
    kept, any of them ends a text); None for none. A Llama this decoder does not compute
    exactly (another activation, biases, scaled rotary positions, a head size other than
    hidden size / heads) is refused rather than converted into another model."""
    c = hf_model.config
    _check_supported(c)
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    eos = _model_eos(hf_model) if eos_token_id is FROM_MODEL else eos_token_id
    if isinstance(eos, Sequence) and not isinstance(eos, str):  # a list from a config
        eos = tuple(eos)
    config = DecoderConfig(
        vocab_size=c.vocab_size, dim=c.hidden_size, heads=heads, layers=c.num_hidden_layers,
        hidden=c.intermediate_size, exit_after=tuple(exit_after),
        max_positions=c.max_position_embeddings, rope_theta=_rope_theta(c),
        eps=c.rms_norm_eps, eos_token_id=eos,
    )  # fmt: skip
    model = MultiExitDecoder(config)
    theirs = hf_model.state_dict()
    embedding = theirs["model.embed_tokens.weight"]
    ours = {
        "embed_tokens.weight": embedding,
        "norm.weight": theirs["model.norm.weight"],
        "lm_head.weight": theirs.get("lm_head.weight", embedding),  # tied in some models
    }
    repeat = heads // kv_heads
    for i in range(config.layers):
        for mine, llama in _LAYER.items():
            weight = theirs[f"model.layers.{i}.{llama}"]
            if mine in ("k_proj.weight", "v_proj.weight") and repeat > 1:
                weight = _expand_kv(weight, kv_heads, repeat)
            ours[f"layers.{i}.{mine}"] = weight
    model.load_state_dict(ours)
    return model.eval()


def decoder_to_llama(model: MultiExitDecoder):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
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


def _check_supported(c) -> None:
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ModelContractError("Llama with attention or MLP biases is not supported")
    if (getattr(c, "rope_scaling", None) or {}).get("rope_type", "default") != "default":
        raise ModelContractError("only Llama's default rotary positions are supported")
    act = getattr(c, "hidden_act", "silu")
    if act not in SILU:
        raise ModelContractError(
            f"Llama's hidden_act is {act!r}; edgeexit's decoder computes SiLU (SwiGLU) only"
        )
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None and head_dim * c.num_attention_heads != c.hidden_size:
        raise ModelContractError(
            f"Llama's head_dim is {head_dim}, not hidden_size / num_attention_heads "
            f"({c.hidden_size} / {c.num_attention_heads}); edgeexit's decoder supports only that"
        )


def _model_eos(hf_model) -> int | list[int] | None:
    """Where transformers' ``generate`` stops: the generation config's end-of-text ids,
    else the model config's."""
    generation = getattr(hf_model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    return eos if eos is not None else getattr(hf_model.config, "eos_token_id", None)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _llama_eos(ids: tuple[int, ...]) -> int | list[int] | None:
    return None if not ids else ids[0] if len(ids) == 1 else list(ids)


def _expand_kv(weight: torch.Tensor, kv_heads: int, repeat: int) -> torch.Tensor:
    rows = weight.view(kv_heads, -1, weight.shape[-1])
    return rows.repeat_interleave(repeat, dim=0).reshape(-1, weight.shape[-1])
