"""`edgeexit export --hf DIR`: a local save_pretrained folder (tiny random BERT and ViT built
from configs, no download) to a bundle whose inputs keep their names, that runs and
calibrates with data named the same; refusals in one line before anything is trained or
written; and nothing from the folder runs (its auto_map code, a pickle as weights)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fixtures.hang import HANG_S
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from edgeexit.cli import app  # noqa: E402
from edgeexit.errors import CheckpointError  # noqa: E402

runner = CliRunner()
SEQ = 10


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A BERT (its classifier saved too) and a ViT, with data for each."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    bert = tf.BertConfig(**small, vocab_size=50, max_position_embeddings=16)
    tf.BertForSequenceClassification(bert).save_pretrained(root / "bert")
    vit = tf.ViTConfig(**small, image_size=8, patch_size=4, num_channels=3)
    tf.ViTModel(vit).save_pretrained(root / "vit")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (24, SEQ))
    np.savez(root / "tok.npz", input_ids=ids, attention_mask=np.ones_like(ids),
             y=(ids[:, 0] > 25).astype(np.int64))  # fmt: skip
    np.savez(root / "px.npz", pixel_values=rng.random((16, 3, 8, 8), dtype=np.float32),
             y=rng.integers(0, 3, 16))  # fmt: skip
    return root


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def input_names(bundle):
    return [i["name"] for i in json.loads((bundle / "manifest.json").read_text())["inputs"]]


@pytest.mark.slow
def test_a_bert_folder_exports_runs_and_calibrates_with_named_data(folders, tmp_path):
    out = tmp_path / "bundle"
    result = cli("export", "--hf", folders / "bert", "--data", folders / "tok.npz", "-o", out,
                 "--exits", "1", "--epochs", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained the exit heads of a bert on 24 samples (1 epochs" in result.stdout
    assert "failed to run" not in result.output  # onnxsim's fold retries are not shown
    assert input_names(out) == ["input_ids", "attention_mask"]
    assert len(json.loads((out / "manifest.json").read_text())["segments"]) == 2
    run = cli("run", out, "--data", folders / "tok.npz")
    assert run.exit_code == 0 and "against the labels 'y'" in run.stdout, run.output
    calibrated = cli("calibrate", out, "--data", folders / "tok.npz", "--max-accuracy-drop", "0.1")
    assert calibrated.exit_code == 0, calibrated.output


@pytest.mark.slow
def test_a_vit_folder_exports_and_runs(folders, tmp_path):
    out = tmp_path / "bundle"
    result = cli("export", "--hf", folders / "vit", "--data", folders / "px.npz", "-o", out,
                 "--epochs", "1", "--lr", "0.01", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"][0]["name"] == "pixel_values"
    assert input_names(out) == ["pixel_values"]
    run = cli("run", out, "--data", folders / "px.npz")
    assert run.exit_code == 0, run.output


def refusals(root):
    """(arguments after `export`, exit code, what the error line says)."""
    tok, px = root / "tok.npz", root / "px.npz"
    (root / "gpt").mkdir(exist_ok=True)
    (root / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    (root / "bare").mkdir(exist_ok=True)
    (root / "bare" / "config.json").write_text((root / "bert" / "config.json").read_text())
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 50, (4, SEQ))
    ones = np.ones_like(ids)
    np.savez(root / "nolabels.npz", input_ids=ids, attention_mask=ones)
    np.savez(root / "vocab.npz", input_ids=ids + 100, attention_mask=ones, y=np.zeros(4, int))
    np.savez(root / "mask.npz", input_ids=ids, attention_mask=ones * 2, y=np.zeros(4, int))
    np.savez(root / "empty.npz", input_ids=ids[:, :0], attention_mask=ones[:, :0], y=ids[:, 0])
    long = rng.integers(1, 50, (4, 20))
    np.savez(root / "long.npz", input_ids=long, attention_mask=np.ones_like(long), y=ids[:, 0])
    hf = ("--hf", root / "bert")
    return [
        ((*hf,), 2, "export --hf needs --data D.npz"),
        ((), 2, "give the model: MODEL (a checkpoint edgeexit.save wrote) or --hf DIR"),
        ((tok, *hf, "--data", tok), 2, "MODEL applies to MODEL exports, not to --hf DIR"),
        ((*hf, "--data", tok, "--factory", "a:b"), 2, "--factory applies to MODEL exports"),
        ((*hf, "--data", tok, "--exits", "0"), 2, "is not a list of layer numbers"),
        ((root / "m.pt", "--exits", "1"), 2, "--exits applies to --hf DIR exports"),
        (("--hf", root / "missing", "--data", tok), 1, "missing does not exist; expected a "
         "folder save_pretrained wrote"),
        (("--hf", tok, "--data", tok), 1, "tok.npz is a file"),
        (("--hf", root, "--data", tok), 1, "config.json does not exist"),
        (("--hf", root / "gpt", "--data", tok), 1, "a model of type 'gpt2'; edgeexit adapts "
         "bert, roberta, distilbert or albert (encoders), vit, or llama, mistral or qwen2 "
         "(decoders)"),
        (("--hf", root / "bare", "--data", tok), 1, "did not load: "),
        ((*hf, "--data", px), 1, "has no array 'input_ids'"),
        ((*hf, "--data", root / "nolabels.npz"), 1, "has no labels 'y'; the exit heads are"),
        ((*hf, "--data", root / "vocab.npz"), 1, "the model's vocabulary is 0..49"),
        ((*hf, "--data", root / "mask.npz"), 1, "attention_mask holds values other than 0"),
        ((*hf, "--data", root / "empty.npz"), 1, "sequences of no tokens"),
        ((*hf, "--data", root / "long.npz"), 1, "sequences of 20 tokens; the model takes at "
         "most 16"),
        ((*hf, "--data", tok, "--exits", "3"), 1, "--exits is [3]; expected increasing layer "
         "numbers in 1..2"),
    ]  # fmt: skip


def test_refusals_are_one_line_and_write_nothing(folders, tmp_path):
    for args, code, message in refusals(folders):
        out = tmp_path / "bundle"
        result = cli("export", *args, "-o", out)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == code, (args, result.output)
        assert len(errors) == 1 and errors[0].startswith("error: "), (args, result.stderr)
        assert message in errors[0], errors[0]
        assert not out.exists()


def test_no_code_from_the_folder_runs(folders, tmp_path):
    from edgeexit.examples.hf_folder import folder_family, load_backbone, load_config

    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (evil / "evil.py").write_text(code + "from transformers import BertConfig as EvilConfig\n")
    config = json.loads((folders / "bert" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "model.safetensors").write_bytes((folders / "bert" / "model.safetensors").read_bytes())
    assert folder_family(evil) == "bert"
    assert type(load_backbone(evil, load_config(evil))).__name__ == "BertModel"  # transformers' own
    (evil / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"embeddings.word_embeddings.weight": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="did not load: Weights only load failed"):
        load_backbone(evil, load_config(evil))
    assert not marker.exists()


def test_head_training_and_layer_options_are_checked():
    from edgeexit.cli import params
    from edgeexit.errors import InputError
    from edgeexit.examples.hf_folder import HeadTraining

    assert params.layers("4, 8") == [4, 8]
    for bad in ("", "0", "-1", "1.5", "a,2"):
        with pytest.raises(Exception, match="is not a list of layer numbers"):
            params.layers(bad)
    for bad in ({"epochs": 0}, {"batch_size": True}, {"lr": 0}, {"lr": float("nan")}):
        with pytest.raises(InputError, match="expected a positive"):
            HeadTraining(**bad)
    help_text = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    defaults = HeadTraining()
    assert f"(default {defaults.epochs})" in help_text and f"(default {defaults.lr:g})" in help_text


def test_without_transformers_it_says_which_extra(folders, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"  # an install without the hf extra
        "from edgeexit.cli import main\n"
        f"sys.argv = ['edgeexit', 'export', '--hf', {str(folders / 'bert')!r}, '--data', "
        f"{str(folders / 'tok.npz')!r}, '-o', 'out']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG_S)  # fmt: skip
    assert done.returncode == 1, done.stderr
    # progress lines may come first on a slow machine (plain lines on a pipe); one error
    (line,) = [ln for ln in done.stderr.splitlines() if not ln.startswith("export: ")]
    assert line.startswith("error: edgeexit export needs transformers") and "edgeexit[hf]" in line
    assert not (tmp_path / "out").exists()
