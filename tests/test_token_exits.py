"""Per-token exits: each token leaves at its own exit, the later segments run on the
remaining tokens only (token-axis compaction), and the answer is exactly the full-length
chain with every finished token masked out of attention."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.bundle import read_manifest  # noqa: E402
from edgeexit.errors import ModelContractError  # noqa: E402

INF = math.inf


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    from edgeexit.examples.tokens import tagging_task, token_tagger, train_tagger

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = token_tagger(seq_len=24, dim=32, heads=2, layers=3)
    ids, mask, labels = tagging_task(400, seq_len=24)
    train_tagger(model, ids, mask, labels, epochs=2)
    root = tmp_path_factory.mktemp("tokens")
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    edgeexit.export(model, example, root / "bundle", output="tokens")
    test = tagging_task(12, seq_len=24, seed=1)
    return root / "bundle", model, test


def masked_reference(bundle, ids, mask, thresholds):
    """The full-length chain, sample by sample: a token whose score passes exit i's
    threshold takes exit i's logits, and is masked out of attention from then on."""
    manifest = read_manifest(bundle)
    sessions = [ort.InferenceSession(str(bundle / s.file)) for s in manifest.segments]
    last = len(sessions) - 1
    all_logits, all_exits = [], []
    for b in range(len(ids)):
        feeds = {"input_ids": ids[b : b + 1], "attention_mask": mask[b : b + 1]}
        finished = np.zeros(ids.shape[1], dtype=bool)
        logits, exits = np.empty((ids.shape[1], 4), np.float32), np.full(ids.shape[1], last)
        for i, (spec, session) in enumerate(zip(manifest.segments, sessions)):
            *carry, step_logits, score = session.run([*spec.carry, spec.logits, spec.score],
                                                     feeds)  # fmt: skip
            new = ~finished if i == last else ~finished & (score[0] >= thresholds[i])
            logits[new], exits[new] = step_logits[0][new], i
            finished |= new
            if i < last:
                hidden, token_mask = carry
                token_mask = token_mask.copy()
                token_mask[0, finished] = 0  # finished tokens: no longer context
                feeds = dict(zip(manifest.segments[i + 1].inputs, (hidden, token_mask)))
        all_logits.append(logits)
        all_exits.append(exits)
    return np.stack(all_logits), np.stack(all_exits)


def test_export_says_tokens_leave_and_are_dropped(tagger):
    bundle, _, _ = tagger
    doc = json.loads((bundle / "manifest.json").read_text())
    assert doc["format"] == "edgeexit.bundle/2" and doc["output"] == "tokens"
    assert doc["finished_tokens"] == "dropped" and doc["tokens"] == 24
    assert all("body" not in s for s in doc["segments"])  # every head decides tokens


@pytest.mark.parametrize("quantiles", [(0.5, 0.5), (0.3, None), (0.8, 0.4)])
def test_compaction_equals_the_masked_chain_in_a_batch_and_alone(tagger, quantiles):
    bundle, _, (ids, mask, _) = tagger
    runtime = edgeexit.Runtime(bundle, threads=1)
    scores = runtime.run_all_exits([ids, mask]).scores  # per token, at full length
    thresholds = (
        *(INF if q is None else float(np.quantile(s, q)) for q, s in zip(quantiles, scores)),
        INF,
    )
    got = runtime.run([ids, mask], thresholds=thresholds)
    want_logits, want_exits = masked_reference(bundle, ids, mask, thresholds)
    np.testing.assert_array_equal(got.exit_index, want_exits)
    np.testing.assert_allclose(got.logits, want_logits, atol=1e-5)
    assert len(set(got.exit_index.ravel().tolist())) > 1  # tokens left at several exits
    alone = runtime.run([ids[3:4], mask[3:4]], thresholds=thresholds)
    np.testing.assert_array_equal(alone.logits[0], got.logits[3])
    assert sum(got.exit_counts()) == ids.size


def test_without_exits_every_token_gets_the_full_models_answer(tagger):
    bundle, model, (ids, mask, _) = tagger
    runtime = edgeexit.Runtime(bundle, threads=1)
    result = runtime.run([ids, mask])  # as exported: every threshold never
    assert (result.exit_index == 2).all()
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask))[-1].numpy()
    np.testing.assert_allclose(result.logits, want, atol=1e-4)
    doc = result.to_json()
    assert np.array(doc["predictions"]).shape == ids.shape and doc["exit_counts"][-1] == ids.size
    every = runtime.run_all_exits([ids, mask])  # every token through every exit, no drop
    assert every.logits.shape == (3, len(ids), 24, 4) and every.scores.shape == (3, len(ids), 24)


def test_the_contract_for_token_exits(tmp_path):
    from torch import nn

    from edgeexit.examples.tokens import TokenHead, token_tagger

    model = token_tagger(seq_len=8, dim=16, heads=2, layers=2).eval()
    ids = torch.randint(1, 64, (2, 8))
    inputs = (ids, torch.ones_like(ids))
    with pytest.raises(ModelContractError, match="scores a whole sample"):
        edgeexit.export(model, inputs, tmp_path / "a", output="tokens", criterion="similarity")

    class Pooled(nn.Module):  # a carry without the token axis cannot be compacted
        def __init__(self, first):
            super().__init__()
            self.first = first

        def forward(self, ids, mask):
            h, mask = self.first(ids, mask)
            return h, mask.sum(dim=1)

    class Second(nn.Module):
        def forward(self, h, pooled):
            return h * 2, pooled

    class Head(TokenHead):
        def forward(self, h, pooled):
            return self.fc(h)

    bad = edgeexit.MultiExit([Pooled(model.segments[0]), Second()], [Head(16, 4), Head(16, 4)],
                             output="tokens")  # fmt: skip
    with pytest.raises(ModelContractError, match="token axis|tokens on axis 1"):
        edgeexit.export(bad, inputs, tmp_path / "b", output="tokens")


def test_calibrate_runs_each_shared_threshold_and_checks_the_held_out_half(tagger, tmp_path):
    import shutil

    from edgeexit.calibrate import Budget
    from edgeexit.calibrate.pipeline import calibrate_bundle
    from edgeexit.errors import CalibrationError

    bundle, _, (ids, mask, labels) = tagger
    copy = shutil.copytree(bundle, tmp_path / "b")
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=mask, y=labels)
    report = calibrate_bundle(copy, tmp_path / "d.npz", Budget(max_accuracy_drop=0.05))
    doc = report.to_json()
    assert doc["kind"] == "tokens" and len(doc["sweep"]) > 5
    chosen = [p for p in doc["sweep"] if p["threshold"] == doc["thresholds"][0]]
    assert not chosen or chosen[0]["agreement"] >= 0.95  # within the budget on the search half
    held = doc["held_out"]
    assert held["met"] == (held["agreement"] >= 0.95) and held["speedup"] > 0
    assert read_manifest(copy).thresholds == tuple(report.thresholds)  # written
    with pytest.raises(CalibrationError, match="max_accuracy_drop` alone"):
        calibrate_bundle(copy, tmp_path / "d.npz", Budget(latency_ms=1.0), write=False)


def test_bench_and_compile_refuse_per_token_bundles(tagger, tmp_path):
    from edgeexit.compile.compiler import compile_bundle
    from edgeexit.errors import BundleError, TargetError
    from edgeexit.measure.bench import bench_bundle

    bundle, _, (ids, mask, labels) = tagger
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=mask)
    with pytest.raises(BundleError, match="give tokens"):
        bench_bundle(bundle, tmp_path / "d.npz")
    with pytest.raises(TargetError, match="give tokens"):
        compile_bundle(bundle, tmp_path / "c", "rpi5")


def test_cli_run_reports_per_token_accuracy(tagger, tmp_path):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    bundle, _, (ids, mask, labels) = tagger
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=mask, y=labels)
    got = CliRunner().invoke(app, ["run", str(bundle), "--input", str(tmp_path / "d.npz"),
                                   "--json"])  # fmt: skip
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert 0 <= doc["accuracy"] <= 1 and np.array(doc["exit_index"]).shape == ids.shape


@pytest.mark.parametrize(
    ("where", "label", "message"),
    [
        ((1, 2), 99, "label 99 (row 1, token 2, 1 such labels) is outside the model's classes; "
                     "expected 0..3"),
        ((0, 3), -1, "label -1 (row 0, token 3, 1 such labels) is outside"),
        ((2, 0), 0.5, "label 0.5 (row 2, token 0, 1 such labels) is a fraction; expected 0..3"),
    ],
)  # fmt: skip
def test_per_token_labels_outside_the_classes_are_one_line(tagger, tmp_path, where, label,
                                                           message):  # fmt: skip
    """They gave an IndexError traceback in `run` (and calibrate took them silently)."""
    import shutil

    from typer.testing import CliRunner

    from edgeexit.cli import app

    bundle, _, (ids, mask, labels) = tagger
    copy = shutil.copytree(bundle, tmp_path / "b")
    y = labels.astype(type(label))
    y[where] = label
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=mask, y=y)
    before = (copy / "manifest.json").read_bytes()
    for args in (["run", str(copy), "--input"],
                 ["calibrate", str(copy), "--max-accuracy-drop", "0.05", "--data"]):  # fmt: skip
        got = CliRunner().invoke(app, [*args, str(tmp_path / "d.npz")])
        errors = [line for line in got.stderr.splitlines() if line.startswith("error: ")]
        assert got.exit_code == 1 and len(errors) == 1, got.output
        assert message in errors[0] and "Traceback" not in got.output
    assert (copy / "manifest.json").read_bytes() == before


def test_a_manifest_asking_to_keep_finished_tokens_is_refused(tagger, tmp_path):
    """The runtime drops a finished token (it is no longer context); a manifest that says
    otherwise describes a model this runtime would run wrongly, silently."""
    import shutil

    from edgeexit.errors import BundleError

    bundle, _, _ = tagger
    copy = shutil.copytree(bundle, tmp_path / "b")
    doc = json.loads((copy / "manifest.json").read_text())
    doc["finished_tokens"] = "kept"
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="finished_tokens is 'kept'; this edgeexit runs"):
        edgeexit.Runtime(copy)


def test_the_token_demo_end_to_end(tmp_path):
    from edgeexit.examples.tokens import run_token_demo

    demo = run_token_demo(tmp_path / "demo", sequences=200, epochs=1, rounds=1)
    doc = demo.to_json()
    assert [r["run"] for r in doc["test"]] == ["no early exit", "per-token exits"]
    assert doc["test"][0]["exit_shares"][-1] == 1.0
    assert 0 <= doc["test_agreement"] <= 1 and doc["speedup"] > 0
    assert doc["calibration"]["kind"] == "tokens"
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()
