"""`edgeexit export --hf DIR` for a Llama, Mistral or Qwen2 folder: a decoder bundle whose
greedy generation is transformers' own, token for token, on random-init and briefly
trained weights (tiny configs made here with save_pretrained, no download), with what
each family adds (grouped-query attention, Qwen2's q/k/v biases and tied embeddings,
sliding windows shorter than the text); and refusals in one line, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from edgeexit.cli import app  # noqa: E402
from edgeexit.export.decoder_fused import AGREEMENT_TOKENS  # noqa: E402
from edgeexit.generation import Generator, SpeculativeOptions  # noqa: E402

runner = CliRunner()
VOCAB, POSITIONS, NEW = 128, 64, 24
WINDOW = 6  # shorter than the prompts and the text generated: the window masks
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS,
             eos_token_id=None, bos_token_id=None, pad_token_id=None)  # fmt: skip
FAMILIES = {  # family -> (config class, model class, what it adds to SMALL)
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": WINDOW}),
    # sliding on layers 2 and 3 only (those from max_window_layers on), tied embeddings
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM,
              {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2,
               "tie_word_embeddings": True}),
}  # fmt: skip
PROMPTS = ([5], [3, 1, 4, 1, 5, 9, 2, 6], list(range(40, 60)))  # 1, 8 and 20 tokens


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def build(family: str, seed: int = 0, **overrides):
    config_class, model_class, adds = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_class(config_class(**{**SMALL, **adds, **overrides}))
    with torch.no_grad():  # transformers starts biases at zero: give Qwen2's some to check
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(0, 0.5)
    return model.eval()


def briefly_trained(model, steps: int = 40):
    """A few Adam steps on a synthetic sequence, so that the weights are not at init and
    the next token is not a near tie."""
    rng = np.random.default_rng(1)
    pattern = torch.from_numpy(rng.integers(0, VOCAB, 12))
    ids = pattern.repeat(4)[None, :POSITIONS]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    return model.eval()


def reference(model, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False,
                             pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def export(model, tmp_path, *args):
    folder, bundle = tmp_path / "folder", tmp_path / "bundle"
    model.save_pretrained(folder)
    result = cli("export", "--hf", folder, "-o", bundle, *args)
    assert result.exit_code == 0, result.output
    if "--json" in args:
        assert json.loads(result.stdout) == json.loads((bundle / "manifest.json").read_text())
    else:
        assert "of 4 layers as a decoder bundle" in " ".join(result.stdout.split())
    return bundle


def assert_generates_as_transformers(model, bundle):
    gen = Generator(bundle, threads=1)
    never = [None] * (gen.num_exits - 1)  # early-exit mode with its exits off
    for prompt in PROMPTS:
        want = reference(model, prompt)
        assert list(gen.generate(prompt, max_new_tokens=NEW).tokens) == want, prompt
        off = gen.generate(prompt, max_new_tokens=NEW, mode="early-exit", thresholds=never)
        assert list(off.tokens) == want and set(off.exits) == {gen.num_exits - 1}
        drafted = gen.generate(prompt, max_new_tokens=NEW, mode="self-speculative",
                               speculative=SpeculativeOptions(k=1, gamma=3))  # fmt: skip
        assert list(drafted.tokens) == want, prompt  # self-speculative keeps full's tokens


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_converted_model_gives_transformers_logits_at_every_exit(family):
    """Closer than argmax (at init the next token is often a near tie): the logits of the
    last exit and of an early one, over a text longer than the window."""
    from edgeexit.examples.hf_llama import llama_to_decoder

    model = build(family)
    decoder = llama_to_decoder(model, (2, 4))
    ids = torch.tensor([PROMPTS[2] + PROMPTS[1]])
    with torch.no_grad():
        theirs = model(ids, output_hidden_states=True)
        early, last = decoder(ids)
        after_two = model.lm_head(model.model.norm(theirs.hidden_states[2]))
    torch.testing.assert_close(last, theirs.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(early, after_two, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["fused", "plain"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_random_init_folder_exports_and_generates_as_transformers(family, attention, tmp_path):
    """Both forms of graph: ONNX Runtime's fused operators (the default where the head size
    allows, as here) and standard ONNX operators."""
    model = build(family)
    bundle = export(model, tmp_path, "--exits", "2", "--attention", attention)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["exit_after"] == [2, 4] and manifest["kv_heads"] == 2
    assert manifest.get("attention", "plain") == attention
    assert_generates_as_transformers(model, bundle)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_quantized_decoder_reports_its_agreement_and_drafts_losslessly(precision, tmp_path):
    """Quantized weights change the model: self-speculative decoding must keep the quantized
    full model's tokens (not fp32's), and the bundle says how often it agrees with fp32."""
    model = briefly_trained(build("qwen2", seed=3))
    (tmp_path / "p.json").write_text(json.dumps([list(p) for p in PROMPTS]))
    folder, bundle = save(model, tmp_path / "folder"), tmp_path / "bundle"
    result = cli("export", "--hf", folder, "-o", bundle, "--exits", "1,2", "--precision",
                 precision, "--block-size", 16, "--prompts", tmp_path / "p.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    said = f"fused operators, {precision} weights in blocks of 16: picks fp32's next token at"
    assert said in shown
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["quantization"]
    assert manifest["precision"] == precision and manifest["attention"] == "fused"
    assert 0.5 <= record["agreement"] <= 1 and record["prompts"] == 3
    assert record["positions"] == 3 * AGREEMENT_TOKENS  # each prompt's continuation
    assert record["bits"] == int(precision[3:]) and record["block_size"] == 16
    gen = Generator(bundle, threads=1)
    for prompt in PROMPTS:
        full = gen.generate(prompt, max_new_tokens=NEW).tokens
        for k in (1, 2):
            drafted = gen.generate(prompt, max_new_tokens=NEW, mode="self-speculative",
                                   speculative=SpeculativeOptions(k=k, gamma=4))  # fmt: skip
            assert drafted.tokens == full, (prompt, k)


def test_decoder_form_flags_are_checked_before_anything_loads(tmp_path):
    llama = save(build("llama"), tmp_path / "llama")
    bert = tiny_bert(tmp_path / "bert")
    (tmp_path / "p.json").write_text("[[1, 2]]")
    (tmp_path / "far.json").write_text("[[1, 999]]")
    cases = [
        ((llama, "--precision", "int3"), 2, "--precision is 'int3'; expected one of fp32, "
         "int8, int4"),
        ((llama, "--attention", "fast"), 2, "--attention is 'fast'; expected one of auto, plain"),
        ((llama, "--precision", "int8", "--block-size", 24), 2, "--block-size is 24; expected a "
         "power of two"),
        ((llama, "--precision", "int4", "--block-size", 1 << 20), 2, "--block-size is 1048576; "
         "expected a power of two from 16 to 256"),
        ((llama, "--block-size", 32), 2, "--block-size applies to --precision int8 or int4, "
         "or --draft"),
        ((llama, "--draft", "int2"), 2, "--draft is 'int2'; expected int8 or int4"),
        ((llama, "--precision", "int8", "--draft", "int4"), 2, "--draft applies to fp32 "
         "decoders"),
        ((llama, "--prompts", tmp_path / "p.json"), 2, "--prompts applies to --precision int8"),
        ((bert, "--precision", "int8"), 2, "--precision applies to decoder folders, not to a bert"),
        ((llama, "--precision", "int8", "--prompts", tmp_path / "far.json"), 1, "prompt 0 holds "
         "token id 999; expected ids in 0..127"),
        ((llama, "--precision", "int8", "--prompts", tmp_path / "none.json"), 1, "prompts file "),
    ]  # fmt: skip
    for args, code, message in cases:
        out = tmp_path / "bundle"
        result = cli("export", "--hf", *args, "-o", out)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.exit_code == code and len(errors) == 1, (args, result.output)
        assert message in errors[0], errors[0]
        assert not out.exists()
    result = cli("export", tmp_path / "m.pt", "-o", tmp_path / "b", "--precision", "int8")
    assert result.exit_code == 2 and "--precision applies to --hf DIR exports" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_briefly_trained_folder_exports_and_generates_as_transformers(family, tmp_path):
    model = briefly_trained(build(family, seed=3))
    bundle = export(model, tmp_path, "--exits", "1,3")
    assert json.loads((bundle / "manifest.json").read_text())["exit_after"] == [1, 3, 4]
    assert_generates_as_transformers(model, bundle)


def test_the_window_is_what_makes_mistral_mistral_here():
    """The prompts above are longer than the window, so the window changes the text: the
    same weights without it generate otherwise (else the tests could not tell)."""
    windowed, plain = briefly_trained(build("mistral", seed=3)), build("mistral", seed=3)
    plain.config.sliding_window = None  # the same weights, attending to every position
    plain.load_state_dict(windowed.state_dict())
    assert reference(windowed, PROMPTS[2]) != reference(plain.eval(), PROMPTS[2])


def test_grouped_kv_heads_are_cached_grouped(tmp_path):
    bundle = export(build("llama"), tmp_path, "--exits", "2", "--max-positions", "32", "--json")
    gen = Generator(bundle, threads=1)
    assert gen.manifest.attention == "fused"  # GroupQueryAttention: one in-place buffer
    assert gen.layers[0][0].keys.shape == (1, 2, 32, 16)  # [1, kv heads, positions, head_dim]
    assert gen.memory.cache_bytes == 2 * 4 * 32 * 2 * 16 * 4  # keys and values, float32
    shown = runner.invoke(app, ["inspect", str(bundle)], env={"COLUMNS": "300"}).stdout
    assert "(4 heads x 16, 2 key/value heads)" in shown and "x 2 heads x 16" in shown
    assert json.loads(cli("inspect", bundle, "--json").stdout)["kv_heads"] == 2


def test_a_window_the_positions_never_reach_is_left_out():
    from edgeexit.examples.hf_llama import llama_to_decoder

    long_window = llama_to_decoder(build("mistral", sliding_window=POSITIONS), (2, 4))
    assert long_window.config.sliding_window is None and long_window.config.sliding_layers == ()
    capped = llama_to_decoder(build("mistral"), (2, 4), max_positions=WINDOW)
    assert capped.config.sliding_window is None
    qwen2 = llama_to_decoder(build("qwen2"), (2, 4))
    assert qwen2.config.sliding_layers == (2, 3) and qwen2.config.qkv_bias


def test_qwen2_windows_the_layers_its_config_says():
    from edgeexit.examples.hf_llama import decoder_config

    def windows(**overrides):
        config = tf.Qwen2Config(**{**SMALL, **FAMILIES["qwen2"][2], **overrides})
        older = tf.Qwen2Config(**{**SMALL, **FAMILIES["qwen2"][2], **overrides})
        older.layer_types = None  # a config from before transformers wrote layer_types
        got = [decoder_config(c, (4,)) for c in (config, older)]
        assert got[0] == got[1]
        return got[0].sliding_window, got[0].sliding_layers

    assert windows() == (WINDOW, (2, 3))
    assert windows(max_window_layers=0) == (WINDOW, (0, 1, 2, 3))
    assert windows(max_window_layers=4) == (None, ())
    assert windows(use_sliding_window=False) == (None, ())


def test_default_exits_are_every_quarter():
    from edgeexit.examples.hf_decoder_folder import decoder_exits

    assert decoder_exits(None, 32) == [8, 16, 24, 32]
    assert decoder_exits(None, 4) == [1, 2, 3, 4]
    assert decoder_exits(None, 2) == [1, 2]
    assert decoder_exits([4], 8) == [4, 8]


def save(model, path):
    model.save_pretrained(path)
    return path


def refusals(tmp_path):
    """(arguments after `export`, exit code, what the error line says)."""
    llama = save(build("llama"), tmp_path / "llama")
    # config only, no weights: these are refused before any weight is looked for
    scaled = config_only("llama", tmp_path / "scaled",
                         rope_scaling={"rope_type": "linear", "factor": 2.0})  # fmt: skip
    no_window = config_only("mistral", tmp_path / "no-window", sliding_window=-1)
    gelu = save(build("mistral", hidden_act="gelu"), tmp_path / "gelu")
    wide = save(build("mistral", head_dim=32), tmp_path / "wide")
    gemma = tmp_path / "gemma"
    gemma.mkdir()
    (gemma / "config.json").write_text('{"model_type": "gemma"}')
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((llama / "config.json").read_text())
    lacking = save(build("qwen2"), tmp_path / "lacking")
    _drop_weight(lacking / "model.safetensors", "model.layers.1.self_attn.k_proj.bias")
    np.savez(tmp_path / "d.npz", input_ids=np.ones((2, 3), int))
    return [
        (("--hf", llama, "--data", tmp_path / "d.npz"), 2, "--data applies to encoder folders: "
         "a llama's exits share its head, nothing is trained or quantized"),
        (("--hf", llama, "--epochs", 2), 2, "--epochs applies to encoder folders"),
        (("--hf", llama, "--lr", 0.1), 2, "--lr applies to encoder folders"),
        (("--hf", llama, "--target", "rpi5"), 2, "--target applies to encoder folders"),
        (("--hf", llama, "--criterion", "entropy"), 2, "--criterion: a llama's exits score "
         "by confidence"),
        (("--hf", llama, "--exits", 5), 1, "--exits is [5]; expected increasing layer numbers "
         "in 1..4"),
        (("--hf", llama, "--max-positions", POSITIONS + 1), 1, "--max-positions is 65; "
         "expected 1..64 (the model's max_position_embeddings)"),
        (("--hf", scaled), 1, "Llama's rotary positions are scaled ('linear'); edgeexit's "
         "decoder computes the default rotary positions only"),
        (("--hf", no_window), 1, "`sliding_window` is -1; expected a positive number"),
        (("--hf", gelu), 1, "Mistral's hidden_act is 'gelu'; edgeexit's decoder computes SiLU"),
        (("--hf", wide), 1, "Mistral's head_dim is 32, not hidden_size / num_attention_heads "
         "(64 / 4)"),
        (("--hf", gemma), 1, "a model of type 'gemma'; edgeexit adapts bert, roberta, "
         "distilbert or albert (encoders), vit, or llama, mistral or qwen2 (decoders)"),
        (("--hf", bare), 1, "did not load: "),
        (("--hf", lacking), 1, "lacks 1 of the model's weights (such as "
         "model.layers.1.self_attn.k_proj.bias)"),
    ]  # fmt: skip


def config_only(family, path, **overrides):
    config_class, _, adds = FAMILIES[family]
    config_class(**{**SMALL, **adds, **overrides}).save_pretrained(path)
    return path


def _drop_weight(path, name):
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    del weights[name]
    save_file(weights, path, metadata={"format": "pt"})


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    for args, code, message in refusals(tmp_path):
        out = tmp_path / "bundle"
        result = cli("export", *args, "-o", out)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in errors if not line.startswith("export: ")]  # progress
        assert result.exit_code == code, (args, result.output)
        assert len(errors) == 1 and errors[0].startswith("error: "), (args, result.stderr)
        assert message in errors[0], errors[0]
        assert not out.exists()


def test_each_library_call_takes_its_own_kind_of_folder(tmp_path):
    from edgeexit.errors import CheckpointError
    from edgeexit.examples.hf_decoder_folder import export_hf_decoder
    from edgeexit.examples.hf_folder import export_hf_folder
    from edgeexit.export.options import ExportOptions

    llama = save(build("llama"), tmp_path / "llama")
    np.savez(tmp_path / "d.npz", input_ids=np.ones((2, 3), int))
    with pytest.raises(CheckpointError, match="holds a llama, a decoder: its exits share"):
        export_hf_folder(llama, tmp_path / "d.npz", tmp_path / "b", ExportOptions())
    with pytest.raises(CheckpointError, match="holds a bert, not a decoder"):
        export_hf_decoder(tiny_bert(tmp_path / "bert"), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def tiny_bert(path):
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return save(tf.BertModel(tf.BertConfig(**small, vocab_size=50)), path)


def test_max_positions_is_for_decoders(tmp_path):
    bert = tiny_bert(tmp_path / "bert")
    result = cli("export", "--hf", bert, "-o", tmp_path / "b", "--max-positions", 8)
    message = "--max-positions applies to decoder folders, not to a bert"
    assert result.exit_code == 2 and message in result.stderr
    result = cli("export", tmp_path / "m.pt", "-o", tmp_path / "b", "--max-positions", 8)
    assert result.exit_code == 2 and "--max-positions applies to --hf DIR exports" in result.stderr


def test_no_code_from_a_decoder_folder_runs(tmp_path):
    folder = save(build("llama"), tmp_path / "evil")
    marker = tmp_path / "ran"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (folder / "evil.py").write_text(code + "from transformers import LlamaConfig as EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    result = cli("export", "--hf", folder, "-o", tmp_path / "bundle")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
