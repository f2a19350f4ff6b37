"""Fused decoder bundles (ONNX Runtime's GroupQueryAttention and fused norms): what export
chooses and refuses, and manifests that disagree with their graphs' form, refused at load.

Generation over fused bundles is checked with the plain ones' tests (test_generation.py runs
every test on both forms; test_export_hf_decoders.py checks both against transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edgeexit.errors import BundleError, DataError, ExportError, InputError  # noqa: E402
from edgeexit.export.decoder_export import export_decoder  # noqa: E402
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder  # noqa: E402
from edgeexit.generation import Generator, SpeculativeOptions  # noqa: E402

# head size 16: what GroupQueryAttention takes; 2 key/value heads, biases and a window
CONFIG = DecoderConfig(dim=64, heads=4, kv_heads=2, layers=3, hidden=96, exit_after=(1, 3),
                       max_positions=40, vocab_size=50, eos_token_id=None, qkv_bias=True,
                       sliding_window=5, sliding_layers=(1, 2))  # fmt: skip


def model_of(config: DecoderConfig = CONFIG) -> MultiExitDecoder:
    torch.manual_seed(0)
    model = MultiExitDecoder(config).eval()
    with torch.no_grad():  # peaked, so that the next token is not a near tie
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    model, root = model_of(), tmp_path_factory.mktemp("fused")
    for form in ("plain", "fused"):
        export_decoder(model, root / form, attention=form)
    export_decoder(model, root / "int8", precision="int8", prompts=[[1, 2, 3], [7] * 9])
    export_decoder(model, root / "draft", draft="int4")
    return model, root


def torch_greedy(model, prompt, new):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(new):
            seq.append(int(model(torch.tensor([seq]))[-1][0, -1].argmax()))
    return seq[len(prompt) :]


def test_fused_and_plain_bundles_generate_pytorchs_tokens(bundles):
    model, root = bundles
    plain, fused = (Generator(root / f, threads=1) for f in ("plain", "fused"))
    assert fused.manifest.fused and not plain.manifest.fused
    for prompt in ([3], list(range(1, 12)), [9, 9, 9, 2]):  # past the window of 5
        want = torch_greedy(model, prompt, 20)
        assert list(plain.generate(prompt, max_new_tokens=20).tokens) == want
        assert list(fused.generate(prompt, max_new_tokens=20).tokens) == want
        spec = fused.generate(prompt, max_new_tokens=20, mode="self-speculative",
                              speculative=SpeculativeOptions(k=1, gamma=5))  # fmt: skip
        assert list(spec.tokens) == want


def test_a_fused_graph_has_the_fused_operators_and_quantized_weights(bundles):
    _, root = bundles
    ops = {n.op_type for n in onnx.load(root / "fused" / "segment_01.onnx").graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "MatMul"} <= ops
    quantized = [n.op_type for n in onnx.load(root / "int8" / "segment_01.onnx").graph.node]
    assert "MatMulNBits" in quantized and "MatMul" not in quantized
    record = json.loads((root / "int8" / "manifest.json").read_text())["quantization"]
    assert record["bits"] == 8 and record["prompts"] == 2 and 0 <= record["agreement"] <= 1


def test_the_quantized_full_model_is_what_drafting_keeps(bundles):
    _, root = bundles
    gen = Generator(root / "int8", threads=1)
    for prompt in ([3], list(range(1, 12))):
        full = gen.generate(prompt, max_new_tokens=25).tokens
        for gamma in (1, 3, 6):
            spec = gen.generate(prompt, max_new_tokens=25, mode="self-speculative",
                                speculative=SpeculativeOptions(k=1, gamma=gamma))  # fmt: skip
            assert spec.tokens == full


def test_the_text_runs_to_the_caches_end_and_no_further(bundles):
    _, root = bundles
    gen = Generator(root / "fused", threads=1)
    prompt = list(range(1, 30))
    room = CONFIG.max_positions - len(prompt) + 1  # the last token is never fed back
    for mode, thresholds in (("full", None), ("self-speculative", None), ("early-exit", [0.5])):
        out = gen.generate(prompt, max_new_tokens=room, mode=mode, thresholds=thresholds)
        assert len(out.tokens) == room
    with pytest.raises(InputError, match="need 41 positions; the bundle's caches hold 40"):
        gen.generate(prompt, max_new_tokens=room + 1)


def test_export_picks_the_form_the_head_size_allows():
    small = DecoderConfig(dim=32, heads=4, layers=2, hidden=48, exit_after=(1, 2),
                          max_positions=16, vocab_size=20, eos_token_id=None)  # fmt: skip
    model = model_of(small)
    with pytest.raises(ExportError, match="multiples of 16 .* this model's is 8"):
        export_decoder(model, "/nonexistent/never-written", attention="fused")
    with pytest.raises(ExportError, match="precision int8 needs fused attention"):
        export_decoder(model, "/nonexistent/never-written", precision="int8")
    with pytest.raises(ExportError, match="precision int4 needs fused attention"):
        export_decoder(model_of(), "/nonexistent/never-written", attention="plain",
                       precision="int4")  # fmt: skip


def test_a_block_size_the_quantizer_refuses_is_refused_first(tmp_path):
    """ONNX Runtime's quantizer raised a RuntimeError from C++ for a block of 1M inputs."""
    for size in (8, 24, 512, 1 << 20):
        with pytest.raises(ExportError, match=f"`block_size` is {size}; expected one of 16, 32"):
            export_decoder(model_of(), tmp_path / "b", precision="int4", block_size=size)
    assert not (tmp_path / "b").exists()


def test_export_auto_falls_back_to_plain_graphs(tmp_path):
    small = DecoderConfig(dim=32, heads=4, layers=2, hidden=48, exit_after=(1, 2),
                          max_positions=16, vocab_size=20, eos_token_id=None)  # fmt: skip
    assert export_decoder(model_of(small), tmp_path / "b").attention == "plain"


def test_prompts_for_the_agreement_are_checked(tmp_path):
    for prompts, message in (([[1, 50]], "token id 50; expected ids in 0..49"),
                             ([[]], "prompt 0 has 0 tokens"),
                             ([[1] * 40], "prompt 0 has 40 tokens; expected 1..39")):  # fmt: skip
        with pytest.raises(DataError, match=message):
            export_decoder(model_of(), tmp_path / "b", precision="int4", prompts=prompts)
        assert not (tmp_path / "b").exists()


def _edited(root, form, tmp_path, **changes):
    import shutil

    copy = tmp_path / f"{form}-edited"
    shutil.copytree(root / form, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


@pytest.mark.parametrize(
    ("form", "changes", "message"),
    [
        ("fused", {"attention": None}, "segment_00.onnx takes input 'seqlens_k'; the manifest"),
        ("plain", {"attention": "fused"}, "segment_00.onnx has no input 'seqlens_k'"),
        ("fused", {"max_positions": 64}, "past_key_0 has 40 at axis 2; the manifest's sizes"),
        ("fused", {"attention": "turbo"}, "attention is 'turbo'; expected one of plain, fused"),
        ("fused", {"precision": "int2"}, "precision is 'int2'; expected one of fp32, int8, int4"),
        ("plain", {"precision": "int8"}, "precision int8 needs fused attention"),
        ("fused", {"attention": 1}, "attention is 1; expected one of plain, fused"),
    ],
)
def test_a_manifest_that_misstates_the_form_is_refused_at_load(
    bundles, tmp_path, form, changes, message
):
    _, root = bundles
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Generator(_edited(root, form, tmp_path, **changes), threads=1)


def test_caches_are_bound_once_and_written_in_place(bundles):
    _, root = bundles
    gen = Generator(root / "fused", threads=1)
    cache = gen.layers[0][0]
    before = cache.keys.ctypes.data
    gen.generate([1, 2, 3], max_new_tokens=5)
    assert cache.keys.ctypes.data == before and np.any(cache.keys[0, :, :8] != 0)
    assert not np.any(cache.keys[0, :, 8:])  # nothing past the 8 positions written


def test_inspect_says_the_form_and_what_quantization_cost(bundles):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    _, root = bundles
    runner = CliRunner()
    shown = " ".join(runner.invoke(app, ["inspect", str(root / "int8")]).stdout.split())
    assert "graphs: fused operators, int8 weights in blocks of 32: picks fp32's next token" in shown
    doc = json.loads(runner.invoke(app, ["inspect", str(root / "fused"), "--json"]).stdout)
    assert (doc["attention"], doc["precision"], doc["quantization"]) == ("fused", "fp32", None)
    shown = " ".join(runner.invoke(app, ["inspect", str(root / "plain")]).stdout.split())
    assert "graphs: standard ONNX operators, fp32 weights" in shown


@pytest.mark.parametrize(
    "record",
    [{"bits": 3, "block_size": 32}, {"bits": 8, "block_size": 32, "agreement": 1.5},
     {"bits": 8, "block_size": "32"}, {"bits": 8, "block_size": 32, "positions": -1}, "8 bits"],
)  # fmt: skip
def test_a_hostile_quantization_record_is_refused(bundles, tmp_path, record):
    _, root = bundles
    with pytest.raises(BundleError, match="quantization is .*; expected bits 4 or 8"):
        Generator(_edited(root, "int8", tmp_path, quantization=record), threads=1)


@pytest.mark.parametrize("k", [1])
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_a_quantized_draft_keeps_the_fp32_models_tokens(bundles, k, gamma):
    """The draft writes the early layers' caches at int4; the verification rewrites them at
    fp32 over the drafted positions, so the text is full fp32 decoding's, token for token."""
    model, root = bundles
    gen = Generator(root / "draft", threads=1)
    assert gen.manifest.draft.precision == "int4" and len(gen.draft_segments) == 1
    accepted = 0
    for prompt in ([3], list(range(1, 12)), [9, 9, 9, 2]):
        want = torch_greedy(model, prompt, 20)
        spec = gen.generate(prompt, max_new_tokens=20, mode="self-speculative",
                            speculative=SpeculativeOptions(k=k, gamma=gamma))  # fmt: skip
        assert list(spec.tokens) == want
        accepted += spec.accepted
        assert list(gen.generate(prompt, max_new_tokens=20).tokens) == want  # full: no draft
    assert accepted > 0  # drafts were kept, so the draft's caches were verified over


def test_draft_exports_are_refused_where_they_would_not_be_lossless(tmp_path):
    with pytest.raises(ExportError, match="a quantized draft is for fp32 models; this one is int8"):
        export_decoder(model_of(), tmp_path / "b", precision="int8", draft="int4")
    with pytest.raises(ExportError, match="draft 'int2': expected int8 or int4"):
        export_decoder(model_of(), tmp_path / "b", draft="int2")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["draft"]["segments"].pop(), "segments must be a non-empty list"),
        (lambda d: d["draft"].update(precision="fp32"), "draft.precision is 'fp32'"),
        (lambda d: d["draft"]["segments"][0].update(layers=2), "expected a copy of each segment"),
        (lambda d: d["draft"]["head"].update(file="head.onnx"), "draft graph 1 is 'head.onnx', as "
         "head is"),
        (lambda d: d["draft"].update(extra=1), "draft must be an object of precision, segments"),
        (lambda d: d.pop("attention"), "a draft needs fused attention"),
        (lambda d: d["draft"]["head"].update(sha256="0" * 64), "draft_head.onnx does not match "
         "its sha256"),
    ],
)  # fmt: skip
def test_a_hostile_draft_is_refused_at_load(bundles, tmp_path, edit, message):
    import shutil

    _, root = bundles
    copy = tmp_path / "draft"
    shutil.copytree(root / "draft", copy)
    doc = json.loads((copy / "manifest.json").read_text())
    edit(doc)
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        Generator(copy, threads=1)


def test_a_swapped_draft_graph_is_refused_at_load(bundles, tmp_path):
    """A draft copy whose file is another graph (hashes updated): its tensors disagree."""
    import hashlib
    import shutil

    _, root = bundles
    copy = tmp_path / "draft"
    shutil.copytree(root / "draft", copy)
    shutil.copy(copy / "segment_01.onnx", copy / "draft_segment_00.onnx")
    doc = json.loads((copy / "manifest.json").read_text())
    data = (copy / "draft_segment_00.onnx").read_bytes()
    doc["draft"]["segments"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="draft_segment_00.onnx"):
        Generator(copy, threads=1)


def test_inspect_lists_the_draft(bundles):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    _, root = bundles
    shown = " ".join(CliRunner().invoke(app, ["inspect", str(root / "draft")]).stdout.split())
    assert "fp32 weights; int4 draft" in shown and "draft head" in shown
    assert "self-speculative drafts with: int4 copies of the early segments" in shown


@pytest.mark.parametrize(
    ("bundle", "version", "message"),
    [
        ("fused", "1.19.2", "fused operators need onnxruntime >= 1.20 .* has 1.19.2: pip install "
         "-U 'onnxruntime>=1.20', or export the model with `attention` plain"),
        ("draft", "1.17.3", "fused operators need onnxruntime >= 1.20"),
        ("int8", "1.21.1", "int8 weights need onnxruntime >= 1.22 .* export the model in fp32 "
         "or int4"),
        ("fused", "1.20.0", None),
        ("int8", "1.22.0", None),
        ("plain", "1.17.0", None),
        ("int8", "2.0.0rc1", None),
    ],
)  # fmt: skip
def test_an_onnxruntime_that_would_run_a_form_wrong_is_refused(bundles, bundle, version, message):
    """Measured on x86 wheels: GroupQueryAttention gave other tokens before 1.20 without an
    error, and 8-bit MatMulNBits loads from 1.22."""
    from edgeexit.generation.graphs import check_onnxruntime
    from edgeexit.generation.manifest import read_decoder_manifest

    _, root = bundles
    manifest = read_decoder_manifest(root / bundle)
    if message is None:
        check_onnxruntime(manifest, version)
    else:
        with pytest.raises(BundleError, match=message):
            check_onnxruntime(manifest, version)
