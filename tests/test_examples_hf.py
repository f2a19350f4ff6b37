"""Hugging Face encoders as multi-exit models: small config-built models (random init, no
downloads) match the transformers model layer for layer and export with validated parity."""

import pytest
import torch

tf = pytest.importorskip("transformers")

import edgeexit  # noqa: E402
from edgeexit.examples.hf import additive_mask, multi_exit_encoder, multi_exit_vit  # noqa: E402

torch.set_num_threads(1)
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
             vocab_size=100, max_position_embeddings=40)  # fmt: skip
ENCODERS = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**SMALL, num_labels=3)),
    "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(**SMALL, pad_token_id=1)),
    "distilbert": lambda: tf.DistilBertModel(
        tf.DistilBertConfig(
            dim=32, n_layers=3, n_heads=2, hidden_dim=64, vocab_size=100, max_position_embeddings=40
        )  # fmt: skip
    ),
    "albert": lambda: tf.AlbertModel(tf.AlbertConfig(**SMALL, embedding_size=16)),
}


def token_batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (4, 12), generator=gen)
    mask = torch.ones(4, 12, dtype=torch.int64)
    mask[1, 8:] = 0  # one padded sample: the mask must be applied, not dropped
    return ids, mask


def chain(model, inputs):
    carry = inputs
    with torch.no_grad():
        for segment in model.segments:
            out = segment(*carry)
            carry = out if isinstance(out, tuple) else (out,)
    return carry


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_layers_match_transformers_and_export(name, tmp_path):
    torch.manual_seed(0)
    hf_model = ENCODERS[name]().eval()
    model = multi_exit_encoder(hf_model, num_labels=3).eval()
    assert len(model.segments) == len(model.exits) == 3
    ids, mask = token_batch()
    with torch.no_grad():
        base = hf_model.base_model
        reference = base(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = chain(model, (ids, mask))[0]
    torch.testing.assert_close(hidden[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-5)
    result = edgeexit.export(model, (ids, mask), tmp_path / name)  # raises unless parity holds
    assert result.manifest.num_exits == 3
    assert [s.name for s in result.manifest.inputs] == ["input_ids", "attention_mask"]


def test_vit_layers_match_transformers_and_export(tmp_path):
    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=64, image_size=16, patch_size=4)  # fmt: skip
    vit = tf.ViTModel(config).eval()
    model = multi_exit_vit(vit, num_labels=5).eval()
    pixels = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        reference = vit(pixel_values=pixels).last_hidden_state
        hidden = chain(model, (pixels,))[0]
        torch.testing.assert_close(vit.layernorm(hidden), reference, atol=1e-5, rtol=1e-5)
        assert model.exits[0](hidden).shape == (2, 5)
    result = edgeexit.export(model, (pixels,), tmp_path / "vit")
    assert [s.name for s in result.manifest.inputs] == ["pixel_values"]


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_exits_after_the_layers_asked_for(name):
    torch.manual_seed(0)
    hf_model = ENCODERS[name]().eval()
    model = multi_exit_encoder(hf_model, num_labels=3, exit_after=[2]).eval()
    assert len(model.segments) == 2  # layers 1-2, then 3 (the last always has an exit)
    ids, mask = token_batch()
    with torch.no_grad():
        reference = hf_model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = chain(model, (ids, mask))[0]
    torch.testing.assert_close(hidden[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-5)
    for bad in ([0], [3, 2], [4], [], [1.5]):
        with pytest.raises(edgeexit.errors.InputError, match="expected increasing layer"):
            multi_exit_encoder(hf_model, num_labels=3, exit_after=bad)


def test_a_hugging_face_model_saves_without_a_factory(tmp_path):
    torch.manual_seed(0)
    model = multi_exit_encoder(ENCODERS["bert"]().eval(), num_labels=3)
    ids, mask = token_batch()
    edgeexit.save(model, tmp_path / "bert.pt", example_inputs=(ids, mask))
    loaded = edgeexit.load(tmp_path / "bert.pt").model
    torch.testing.assert_close(chain(loaded, (ids, mask))[0], chain(model.eval(), (ids, mask))[0])


def test_the_mask_is_additive_and_never_none():
    mask = additive_mask(torch.tensor([[1, 1, 0]]), torch.float32)
    assert mask.shape == (1, 1, 1, 3) and mask[0, 0, 0, :2].eq(0).all()
    assert mask[0, 0, 0, 2] == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="expected bert, roberta, distilbert or albert"):
        multi_exit_encoder(tf.ViTModel(tf.ViTConfig(hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2)), 2)  # fmt: skip


def test_export_says_nothing_of_onnxsims_fold_retries(tmp_path, capfd):
    # onnxsim wrote 'WARNING: failed to run "GatherElements" op ... skip...' for BERT's
    # token type and position lookups, from C++, straight to file descriptor 2
    torch.manual_seed(0)
    model = multi_exit_encoder(ENCODERS["bert"]().eval(), num_labels=3).eval()
    edgeexit.export(model, token_batch(), tmp_path / "b", bodies=False)
    assert "failed to run" not in capfd.readouterr().err


def test_other_lines_on_stderr_pass_while_fold_retries_are_dropped(capfd):
    import os

    from edgeexit.export.convert import without_fold_skips

    with without_fold_skips():
        os.write(2, b'WARNING: failed to run "Gather" op (name is "/e/Gather"), skip... no x\n')
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"
