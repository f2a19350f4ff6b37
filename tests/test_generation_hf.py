"""transformers' LlamaForCausalLM and edgeexit's decoder are the same network, both ways."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeexit.examples.hf_llama import decoder_to_llama, llama_to_decoder  # noqa: E402
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder  # noqa: E402


def test_a_decoder_and_its_llama_give_the_same_logits():
    torch.manual_seed(0)
    config = DecoderConfig(
        dim=32, heads=4, layers=3, hidden=48, exit_after=(1, 3), vocab_size=50, eos_token_id=None
    )
    model = MultiExitDecoder(config)
    llama = decoder_to_llama(model)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        want = llama(ids).logits
        got = model(ids)[-1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_config_built_llama_with_grouped_kv_heads_becomes_a_decoder_with_them():
    config = transformers.LlamaConfig(
        vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(1)
    llama = transformers.LlamaForCausalLM(config).eval()
    model = llama_to_decoder(llama, (2, 4))
    assert model.config.kv_heads == 2  # kept grouped: the caches hold 2 heads, not 4
    assert model.layers[0].k_proj.weight.shape == (16, 32)
    ids = torch.randint(0, 60, (1, 7))
    with torch.no_grad():
        want = llama(ids).logits
        exits = model(ids)
        torch.testing.assert_close(exits[-1], want, atol=1e-5, rtol=1e-4)
        hidden = llama(ids, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(exits[0], llama.lm_head(llama.model.norm(hidden)),
                                   atol=1e-5, rtol=1e-4)  # fmt: skip


def small_llama(**overrides):
    fields = dict(vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(2)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **overrides}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_act="relu"), "hidden_act is 'relu'; edgeexit's decoder computes SiLU"),
        (dict(hidden_act="gelu"), "hidden_act is 'gelu'"),
        (dict(head_dim=16), "head_dim is 16, not hidden_size / num_attention_heads (32 / 4)"),
        (dict(eos_token_id=60), "eos_token_id 60 is not a token id"),
    ],
)
def test_a_llama_the_decoder_does_not_compute_is_refused_in_one_line(overrides, message):
    from edgeexit.errors import ModelContractError

    with pytest.raises(ModelContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        llama_to_decoder(small_llama(**overrides).eval(), (1, 2))


def test_swish_is_silu():
    llama = small_llama(hidden_act="swish").eval()
    ids = torch.randint(0, 60, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(llama_to_decoder(llama, (1, 2))(ids)[-1], llama(ids).logits,
                                   atol=1e-5, rtol=1e-4)  # fmt: skip


def test_end_of_text_ids_come_from_the_model_unless_given():
    assert llama_to_decoder(small_llama(eos_token_id=7), (1, 2)).config.eos_token_ids == (7,)
    several = llama_to_decoder(small_llama(eos_token_id=[7, 9]), (1, 2))
    assert several.config.eos_token_ids == (7, 9)
    assert decoder_to_llama(several).config.eos_token_id == [7, 9]
    assert (
        llama_to_decoder(
            small_llama(eos_token_id=7), (1, 2), eos_token_id=None
        ).config.eos_token_ids
        == ()
    )


def test_a_converted_llama_stops_generating_where_transformers_does(tmp_path):
    from edgeexit.export.decoder_export import export_decoder
    from edgeexit.generation import Generator

    llama = small_llama(eos_token_id=None, bos_token_id=None, pad_token_id=None).eval()
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        free = llama.generate(prompt, max_new_tokens=16, do_sample=False)[0, 5:].tolist()
    stops = [free[3], free[7]]  # two ids it emits: transformers stops at the first met
    llama.config.eos_token_id = llama.generation_config.eos_token_id = stops
    with torch.no_grad():
        want = llama.generate(prompt, max_new_tokens=16, do_sample=False,
                              pad_token_id=stops[0])[0, 5:].tolist()  # fmt: skip
    export_decoder(llama_to_decoder(llama, (1, 2)), tmp_path / "bundle")
    got = Generator(tmp_path / "bundle", threads=1).generate(prompt[0].numpy(), max_new_tokens=16)
    assert list(got.tokens) == want and got.stopped == "eos"
    assert len(want) < len(free)
