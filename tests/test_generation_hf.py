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


def test_a_config_built_llama_with_grouped_kv_heads_becomes_a_decoder():
    config = transformers.LlamaConfig(
        vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(1)
    llama = transformers.LlamaForCausalLM(config).eval()
    model = llama_to_decoder(llama, (2, 4))
    ids = torch.randint(0, 60, (1, 7))
    with torch.no_grad():
        want = llama(ids).logits
        exits = model(ids)
        torch.testing.assert_close(exits[-1], want, atol=1e-5, rtol=1e-4)
        hidden = llama(ids, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(exits[0], llama.lm_head(llama.model.norm(hidden)),
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
