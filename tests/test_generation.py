"""Early-exit text generation over a decoder bundle, against PyTorch references.

A small random decoder (3 exits) is exported once. ``full`` must give PyTorch's greedy
tokens; ``self-speculative`` must give ``full``'s for every draft depth and length (cache
roll-back, prompts of 1 token and longer than a draft, EOS inside a draft, the token limit
reached mid-draft); ``early-exit`` must give what the full model's own exits give when each
token leaves at the first confident one (the skipped layers' caches, filled later from the
exit's hidden state, are exactly the full model's).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeexit.errors import BundleError, InputError  # noqa: E402
from edgeexit.export.decoder_export import export_decoder  # noqa: E402
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder  # noqa: E402
from edgeexit.generation import Generator, SpeculativeOptions  # noqa: E402

CONFIG = DecoderConfig(dim=32, heads=2, layers=4, hidden=64, exit_after=(1, 2, 4),
                       max_positions=48, vocab_size=40, eos_token_id=None)  # fmt: skip
PROMPTS = ([5], [1, 2, 3, 4, 5, 6, 7, 8, 9], [30, 3, 3, 3])


@pytest.fixture(scope="module", params=["plain", "fused"])
def decoder(tmp_path_factory, request):
    """The decoder and its bundle, exported in both forms: every test holds for each."""
    torch.manual_seed(0)
    model = MultiExitDecoder(CONFIG).eval()
    with torch.no_grad():  # a peaked random model: its exits are confident sometimes
        model.lm_head.weight.mul_(8.0)
    bundle = tmp_path_factory.mktemp("decoder") / "bundle"
    export_decoder(model, bundle, attention=request.param)
    return model, bundle, Generator(bundle, threads=1)


def torch_greedy(model, prompt, new, thresholds=None):
    """PyTorch's greedy tokens; with thresholds, each token from the first exit whose
    confidence reaches its threshold (the last takes the rest), and its exit."""
    seq, exits = list(prompt), []
    with torch.no_grad():
        for _ in range(new):
            outs = [o[0, -1] for o in model(torch.tensor([seq]))]
            chosen = len(outs) - 1
            if thresholds is not None and len(seq) > len(prompt):  # the first is prefilled
                for e, t in enumerate(thresholds):
                    if torch.softmax(outs[e], -1).max() >= t:
                        chosen = e
                        break
            exits.append(chosen)
            seq.append(int(outs[chosen].argmax()))
    return seq[len(prompt) :], exits


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"len{len(p)}")
def test_full_is_pytorchs_greedy_decoding(decoder, prompt):
    model, _, gen = decoder
    assert (
        list(gen.generate(prompt, max_new_tokens=12).tokens) == torch_greedy(model, prompt, 12)[0]
    )


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_self_speculative_is_token_identical_to_full(decoder, k, gamma):
    _, _, gen = decoder
    for prompt in PROMPTS:
        full = gen.generate(prompt, max_new_tokens=20).tokens
        spec = gen.generate(prompt, max_new_tokens=20, mode="self-speculative",
                            speculative=SpeculativeOptions(k=k, gamma=gamma))  # fmt: skip
        assert spec.tokens == full
        assert spec.verifications < len(full) or gamma == 1
        assert 0 <= spec.accepted <= spec.drafted


def test_rejected_drafts_are_rolled_back(decoder):
    _, _, gen = decoder
    prompt = PROMPTS[1]
    full = gen.generate(prompt, max_new_tokens=24).tokens
    spec = gen.generate(prompt, max_new_tokens=24, mode="self-speculative",
                        speculative=SpeculativeOptions(k=1, gamma=6))  # fmt: skip
    assert spec.accepted < spec.drafted  # some drafts were rejected: their caches rolled back
    assert spec.tokens == full
    again = gen.generate(PROMPTS[2], max_new_tokens=24, mode="self-speculative")
    assert again.tokens == gen.generate(PROMPTS[2], max_new_tokens=24).tokens


def test_the_token_limit_and_a_draft_stop_inside_a_draft(decoder):
    _, _, gen = decoder
    for new in (1, 2, 5):
        spec = gen.generate(PROMPTS[0], max_new_tokens=new, mode="self-speculative",
                            speculative=SpeculativeOptions(k=2, gamma=8))  # fmt: skip
        assert spec.tokens == gen.generate(PROMPTS[0], max_new_tokens=new).tokens
        assert len(spec.tokens) == new and spec.stopped == "max_new_tokens"
    never = gen.generate(PROMPTS[1], max_new_tokens=10, mode="self-speculative",
                         speculative=SpeculativeOptions(k=1, gamma=4, draft_stop=1.1))  # fmt: skip
    assert never.drafted == 0 and never.tokens == gen.generate(PROMPTS[1], max_new_tokens=10).tokens


def test_eos_inside_a_draft_ends_generation_where_full_does(decoder, tmp_path):
    _, bundle, gen = decoder
    full = gen.generate(PROMPTS[1], max_new_tokens=20).tokens
    eos = full[5]  # a token the model emits: make it the end of text in a copy
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in bundle.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    doc = json.loads((copy / "manifest.json").read_text())
    doc["eos_token_id"] = eos
    (copy / "manifest.json").write_text(json.dumps(doc))
    stopping = Generator(copy, threads=1)
    want = list(full[: full.index(eos) + 1])
    for mode in ("full", "self-speculative"):
        out = stopping.generate(PROMPTS[1], max_new_tokens=20, mode=mode,
                                speculative=SpeculativeOptions(k=1, gamma=6))  # fmt: skip
        assert list(out.tokens) == want and out.stopped == "eos"


@pytest.mark.parametrize("thresholds", [(0.0, 0.0), (0.5, 0.5), (0.2, 0.9), (np.inf, np.inf)])
def test_early_exit_is_the_full_models_first_confident_exit(decoder, thresholds):
    model, _, gen = decoder
    for prompt in PROMPTS:
        out = gen.generate(prompt, max_new_tokens=14, mode="early-exit", thresholds=thresholds)
        want, exits = torch_greedy(model, prompt, 14, thresholds)
        assert list(out.tokens) == want
        assert list(out.exits) == exits


def test_bad_inputs_are_one_line_errors(decoder, tmp_path):
    _, bundle, gen = decoder
    cases = [
        (dict(prompt=[]), "the prompt is empty"),
        (dict(prompt=[1, 99]), "prompt id 99 at position 1 is outside the vocabulary"),
        (dict(prompt=[-1]), "outside the vocabulary"),
        (dict(prompt=[1] * 40, max_new_tokens=10), "need 49 positions; .* caches hold 48"),
        (dict(prompt=[1], max_new_tokens=0), "`max_new_tokens` is 0"),
        (dict(prompt=[1], mode="beam"), "mode 'beam'"),
        (dict(prompt=[1], mode="early-exit"), "early-exit decoding needs thresholds"),
        (dict(prompt=[1], mode="early-exit", thresholds=[0.5]), "got 1 thresholds; expected 2"),
        (dict(prompt=[1], mode="self-speculative", speculative=SpeculativeOptions(k=3)),
         "draft depth k is 3; expected 1..2"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message) as err:
            gen.generate(**kwargs)
        assert "\n" not in str(err.value)
    (bundle.parent / "tampered").mkdir()
    for f in bundle.iterdir():
        (bundle.parent / "tampered" / f.name).write_bytes(f.read_bytes())
    with open(bundle.parent / "tampered" / "head.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="head.onnx does not match its sha256"):
        Generator(bundle.parent / "tampered")


def test_calibration_chooses_and_records_settings_that_hold(decoder, tmp_path):
    from edgeexit.generation.calibrate import calibrate_generation

    _, bundle, _ = decoder
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in bundle.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    report = calibrate_generation(copy, PROMPTS[:2], held_out=PROMPTS[2:], max_new_tokens=10,
                                  min_agreement=0.8, threads=1)  # fmt: skip
    assert report.calibration_agreement >= 0.8 and report.held is not None
    assert 1 <= report.self_speculative["k"] <= 2 and report.speculative_speedup > 0
    gen = Generator(copy, threads=1)  # the manifest's choice is the default now
    assert gen.manifest.generation["self_speculative"] == report.self_speculative
    out = gen.generate(PROMPTS[0], max_new_tokens=10, mode="early-exit")
    assert len(out.exits) == len(out.tokens)
    spec = gen.generate(PROMPTS[0], max_new_tokens=10, mode="self-speculative")
    assert spec.tokens == gen.generate(PROMPTS[0], max_new_tokens=10).tokens


def cli(*args):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_generate_command(decoder, tmp_path):
    _, bundle, gen = decoder
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3 4")
    result = cli("generate", bundle, "--prompt-ids", ids, "-n", 8, "--mode",
                 "self-speculative", "--k", 2, "--gamma", 3, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tokens"] == list(gen.generate([1, 2, 3, 4], max_new_tokens=8).tokens)
    assert doc["mode"] == "self-speculative" and doc["new_tokens"] == 8
    early = cli("generate", bundle, "--prompt-ids", ids, "--mode", "early-exit",
                "--thresholds", "0.5,inf", "--json")  # fmt: skip
    assert early.exit_code == 0 and json.loads(early.stdout)["exits"]
    np.save(tmp_path / "ids.npy", np.array([1, 2, 3, 4]))
    assert cli("generate", bundle, "--prompt-ids", tmp_path / "ids.npy").exit_code == 0


def test_generate_refuses_bad_input_in_one_line(decoder, tmp_path):
    _, bundle, _ = decoder
    (tmp_path / "words.txt").write_text("one two")
    (tmp_path / "far.txt").write_text("1 999")
    cases = [
        (("--prompt", "hi"), 2, "no byte-level tokenizer: pass --prompt-ids"),
        ((), 2, "give the prompts as --prompt TEXT or --prompt-ids FILE (either repeated), or "
                "--prompts FILE.json: one of them"),
        (("--prompt-ids", tmp_path / "missing.txt"), 1, "does not exist"),
        (("--prompt-ids", tmp_path / "words.txt"), 1, "are not integers"),
        (("--prompt-ids", tmp_path / "far.txt"), 1, "prompt id 999 at position 1"),
        (("--prompt-ids", tmp_path / "far.txt", "--mode", "early-exit", "--thresholds", "a,b"),
         2, "not a comma-separated list"),
        (("--prompt-ids", tmp_path / "far.txt", "-n", 0), 2, "--max-new-tokens"),
        (("--prompt-ids", tmp_path / "far.txt", "--gamma", 2, "--thresholds", "0.5,inf"), 2,
         "--gamma is self-speculative's and --thresholds early-exit's: give --mode"),
    ]  # fmt: skip
    for args, code, message in cases:
        result = cli("generate", bundle, *args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.exit_code == code and len(errors) == 1, (args, result.output)
        assert message in errors[0], errors[0]
    run = cli("run", bundle, "--input", tmp_path / "far.txt")
    assert run.exit_code == 1 and "run it with `edgeexit generate`" in run.stderr


REPORT = {"min_agreement": 0.9, "held_out_agreement": 0.95, "held": True,
          "speculative_speedup": 1.5, "early_exit_speedup": 1.2}  # fmt: skip
RECORDED = {"self_speculative": {"k": 1, "gamma": 3, "draft_stop": 0.0},
            "early_exit": [0.5, None]}  # fmt: skip


@pytest.mark.parametrize(
    ("generation", "mode", "why"),
    [
        ({}, "full", "records no generation settings: calibrate-generation chooses them"),
        ({**RECORDED, "report": REPORT}, "self-speculative", "1.50x full's tokens/s, the same"),
        ({**RECORDED, "report": {**REPORT, "early_exit_speedup": 2.0}}, "early-exit",
         "2.00x full's tokens/s, 95.0% of full's tokens on held-out prompts (at least 90%"),
        ({**RECORDED, "report": {**REPORT, "early_exit_speedup": 2.0, "held": False,
                                 "held_out_agreement": 0.8}}, "self-speculative", "1.50x"),
        ({**RECORDED, "report": {**REPORT, "speculative_speedup": 0.9, "held": None,
                                 "held_out_agreement": None}}, "full",
         "no faster mode: self-speculative ran 0.90x full's tokens/s; early-exit was not "
         "checked on held-out prompts"),
        ({**RECORDED, "early_exit": [None, None], "report": {**REPORT, "speculative_speedup":
                                                              1.0}}, "full", "ran 1.00x"),
        (RECORDED, "self-speculative", "recorded settings (not measured)"),
        ({"early_exit": [0.5, 0.7]}, "early-exit", "recorded thresholds (not measured)"),
    ],
)  # fmt: skip
def test_the_default_mode_is_the_fastest_calibrated_one_whose_output_is_accepted(
    generation, mode, why
):
    from edgeexit.generation import chosen_mode

    choice = chosen_mode(generation)
    assert choice.mode == mode and why in choice.why, choice


def calibrated_copy(bundle, tmp_path, generation):
    from edgeexit.generation.manifest import read_decoder_manifest, write_decoder_manifest

    copy = tmp_path / "calibrated"
    copy.mkdir()
    for f in bundle.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    write_decoder_manifest(copy, read_decoder_manifest(copy).with_generation(generation))
    return copy


def test_generate_runs_the_calibrated_mode_and_labels_its_output(decoder, tmp_path):
    _, bundle, gen = decoder
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3 4")
    plain = cli("generate", bundle, "--prompt-ids", ids, "-n", 6)
    assert plain.exit_code == 0, plain.output
    assert "mode: full (the bundle records no generation settings" in plain.stderr
    want = " ".join(str(t) for t in gen.generate([1, 2, 3, 4], max_new_tokens=6).tokens)
    assert plain.stdout == want + "\n"  # the ids alone: `generate ... > out.txt`
    assert plain.stderr.index("token ids:") < plain.stderr.index("full: 6 new tokens")
    copy = calibrated_copy(bundle, tmp_path, {**RECORDED, "report": REPORT})
    fast = cli("generate", copy, "--prompt-ids", ids, "-n", 6, "--json")
    doc = json.loads(fast.stdout)
    assert doc["mode"] == "self-speculative" and "1.50x" in doc["mode_reason"]
    assert " ".join(map(str, doc["tokens"])) == want  # self-speculative: full's tokens
    asked = cli("generate", copy, "--prompt-ids", ids, "-n", 6, "--mode", "full")
    assert "mode: full (asked for with --mode)" in asked.stderr
    implied = cli("generate", bundle, "--prompt-ids", ids, "-n", 6, "--thresholds", "0.5,inf")
    assert "mode: early-exit (implied by --thresholds)" in implied.stderr


def test_a_byte_level_bundles_text_is_labelled(tmp_path):
    config = DecoderConfig(dim=16, heads=2, layers=2, hidden=32, exit_after=(1, 2),
                           max_positions=32, vocab_size=260, eos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    export_decoder(MultiExitDecoder(config).eval(), tmp_path / "b", tokenizer="bytes")
    result = cli("generate", tmp_path / "b", "--prompt", "hi", "-n", 4)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("mode: full (") and lines[1] == "text:"
    assert "text:" not in result.stdout and result.stdout.endswith("\n")


def test_the_calibrate_generation_command(decoder, tmp_path):
    _, bundle, _ = decoder
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([list(p) for p in PROMPTS]))
    result = cli("calibrate-generation", bundle, "--prompts", prompts, "-n", 6,
                 "--min-agreement", "0.8", "--dry-run", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["min_agreement"] == 0.8 and len(doc["early_exit"]) == 2
    assert (
        "generation" not in json.loads((bundle / "manifest.json").read_text())
        or not (json.loads((bundle / "manifest.json").read_text())["generation"])
    )  # --dry-run left it
    text = tmp_path / "text.json"
    text.write_text(json.dumps(["hello"]))
    bad = cli("calibrate-generation", bundle, "--prompts", text)
    assert bad.exit_code == 1 and "no byte tokenizer" in bad.stderr


def test_two_threads_get_their_own_right_answers(decoder):
    from concurrent.futures import ThreadPoolExecutor

    _, _, gen = decoder
    want = {tuple(p): gen.generate(p, max_new_tokens=10).tokens for p in PROMPTS}
    modes = ("full", "self-speculative", "early-exit")

    def one(i):
        prompt = PROMPTS[i % len(PROMPTS)]
        out = gen.generate(prompt, max_new_tokens=10, mode=modes[i % 3],
                           thresholds=(np.inf, np.inf))  # fmt: skip
        return tuple(prompt), out.tokens

    with ThreadPoolExecutor(4) as pool:
        for prompt, tokens in pool.map(one, range(24)):
            assert tokens == want[prompt]


def test_a_classifier_bundle_is_named_as_one(tmp_path):
    import edgeexit
    from edgeexit.examples import digits_resnet

    edgeexit.export(digits_resnet(width=4).eval(), torch.rand(2, 1, 8, 8), tmp_path / "b")
    with pytest.raises(BundleError, match="a classifier bundle.*`edgeexit run`"):
        Generator(tmp_path / "b")


class _ScriptedGenerator:
    """Early-exit decoding with known answers: tokens agree with full decoding while exit
    0's threshold is >= 0.7 (half of them differ below); the lower either threshold, the
    more tokens leave early. Exit 1 never costs agreement."""

    num_exits = 3

    def generate(self, prompt, *, max_new_tokens, mode="full", thresholds=None):
        from edgeexit.generation.generator import Generation

        full = (1,) * 20
        if mode == "full":
            return Generation(mode, len(prompt), full, 1.0, "max_new_tokens")
        t0, t1 = (min(t, 1.0) for t in thresholds)
        tokens = full if t0 >= 0.7 - 1e-9 else (1,) * 10 + (2,) * 10
        first = round(20 * (1 - t0))
        second = min(round(20 * (1 - t1)), 20 - first)
        exits = (0,) * first + (1,) * second + (2,) * (20 - first - second)
        return Generation(mode, len(prompt), tokens, 1.0, "max_new_tokens", exits=exits)


def test_threshold_search_lowers_each_exit_as_far_as_the_bound_allows():
    from edgeexit.generation.calibrate import _choose_thresholds

    seen = []
    chosen, agreement = _choose_thresholds(
        _ScriptedGenerator(), [[1]] * 4, 20, 0.9, lambda *a: seen.append(a)
    )
    # shared down to 0.7 (0.65 breaks exit 0), then exit 1 alone down to 0.3, below
    # which no more tokens leave there (a lower threshold would buy nothing)
    assert chosen == (0.7, 0.3)
    assert agreement.mean == 1.0 and agreement.lower() == 1.0
    assert agreement.depth == pytest.approx(((0 + 1) * 6 + 2 * 14) / 20 / 3)
    assert seen and all(stage == "early-exit thresholds" for stage, _, _ in seen)


def test_the_agreement_bound_is_below_the_mean_when_prompts_differ():
    from edgeexit.generation.calibrate import Agreement

    steady = Agreement(np.full(8, 9), np.full(8, 10), 0.5)
    assert steady.lower() == pytest.approx(0.9) == steady.mean
    mixed = Agreement(np.array([10, 10, 10, 10, 10, 10, 2, 10]), np.full(8, 10), 0.5)
    assert mixed.mean == pytest.approx(0.9)
    assert mixed.lower() < 0.85  # one prompt that diverged early weighs on the bound


def test_self_distillation_adds_the_early_exits_divergence_from_the_last():
    from edgeexit.export.decoder_model import early_exit_loss

    torch.manual_seed(0)
    last = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    plain = early_exit_loss([last.clone(), last], targets, 1.5)
    # an early exit that already predicts what the last one does: nothing to add
    same = early_exit_loss([last.clone(), last], targets, 1.5, distill=1.0)
    assert same.item() == pytest.approx(plain.item(), abs=1e-6)
    other = torch.randn(2, 5, 11, requires_grad=True)
    base = early_exit_loss([other, last], targets, 1.5)
    distilled = early_exit_loss([other, last], targets, 1.5, distill=2.0)
    teacher = torch.softmax(last, -1)
    kl = (teacher * (teacher.log() - torch.log_softmax(other, -1))).sum(-1).mean()
    assert distilled.item() == pytest.approx(base.item() + 2.0 * kl.item(), rel=1e-5)
    distilled.backward()  # the last exit is the teacher, held fixed: only `other` learns
    assert other.grad is not None


def test_speculative_settings_are_ranked_by_the_fitted_cost_not_their_own_noisy_timing():
    from edgeexit.generation.calibrate import _model_seconds

    rng = np.random.default_rng(1)
    steps = rng.integers(300, 500, 12)
    checks = rng.integers(50, 150, 12)
    true = 0.05 + 0.001 * steps + 0.003 * checks
    noisy = true * rng.uniform(0.8, 1.2, 12)  # a shared machine's scatter
    tried = [{"k": 1, "draft_steps": int(d), "verifications": int(v), "seconds": float(s)}
             for d, v, s in zip(steps, checks, noisy)]  # fmt: skip
    _model_seconds(tried)
    modeled = np.array([t["modeled_seconds"] for t in tried])
    assert np.abs(modeled - true).max() < np.abs(noisy - true).max() / 2
    assert true[np.argmin(modeled)] <= true.min() * 1.02 < true[np.argmin(noisy)]
    few = [dict(t) for t in tried[:3]]  # too few settings to fit three costs: timings stand
    _model_seconds(few)
    assert [t["modeled_seconds"] for t in few] == [t["seconds"] for t in few]
    odd = [{"k": 2, "draft_steps": d, "verifications": 10, "seconds": s}  # more steps, faster
           for d, s in ((100, 0.9), (200, 0.5), (300, 0.3), (400, 0.2))]  # fmt: skip
    _model_seconds(odd)
    assert [t["modeled_seconds"] for t in odd] == [0.9, 0.5, 0.3, 0.2]


@pytest.mark.parametrize("bf16", [False, True])
def test_decoder_training_learns_and_keeps_float32_weights_under_bf16_autocast(bf16):
    from edgeexit.export.train import train_decoder

    torch.manual_seed(0)
    model = MultiExitDecoder(CONFIG)
    corpus = np.tile(np.arange(10), 200)  # counting: learnable in a few steps
    losses = train_decoder(model, corpus, steps=40, seq_len=16, batch_size=8, lr=1e-2,
                           exit_scale=1.5, distill=1.0, bf16=bf16)  # fmt: skip
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5]) / 2
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_decoder_training_takes_any_step_count():
    from edgeexit.export.train import train_decoder

    model = MultiExitDecoder(CONFIG)
    corpus = np.tile(np.arange(10), 50)
    for steps in (1, 2, 10, 11):  # 10: OneCycleLR's warm-up of one step divided by zero
        losses = train_decoder(model, corpus, steps=steps, seq_len=8, batch_size=2)
        assert len(losses) == steps and np.isfinite(losses).all()


def test_demo_generate_trains_the_demos_own_step_count_unless_told(monkeypatch, tmp_path):
    import edgeexit.cli.demo as cli_demo
    import edgeexit.examples.generation_demo as demo

    seen = []

    def run(out, progress, steps=demo.STEPS, **rest):
        seen.append(steps)

    monkeypatch.setattr(demo, "run_generation_demo", run)
    monkeypatch.setattr(cli_demo, "_run_and_show", lambda run, as_json, kept: run(None))
    assert cli("demo", "--generate", "-o", tmp_path / "a").exit_code == 0
    assert cli("demo", "--generate", "--steps", 7, "-o", tmp_path / "b").exit_code == 0
    assert cli("demo", "--generate", "--quick", "-o", tmp_path / "c").exit_code == 0
    assert cli("demo", "--generate", "--quick", "--steps", 7, "-o", tmp_path / "d").exit_code == 0
    assert seen == [demo.STEPS, 7, demo.QUICK["steps"], 7]
