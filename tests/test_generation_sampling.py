"""Sampled decoding: the options and the distribution a token is drawn from, and the claim
that self-speculative sampling keeps full decoding's distribution exactly.

That claim is tested statistically against the exact distribution: a tiny decoder (8
tokens) whose second layer is scaled up so that its draft exit (after layer 1) and its full
model disagree a lot; the exact joint distribution of the first three sampled tokens after
a fixed prompt, from PyTorch's logits, against the frequencies of thousands of seeded runs
(a chi-square test at a fixed seed, whose threshold a correct sampler misses once in 10^4
seed sets). The same test, with the acceptance rule replaced by a wrong one (keep every
draft: tokens from the draft's distribution; or draw a rejected token from p instead of
the residual), must reject: the test can tell.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeexit.errors import InputError  # noqa: E402
from edgeexit.export.decoder_export import export_decoder  # noqa: E402
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder  # noqa: E402
from edgeexit.generation import (  # noqa: E402
    Generator,
    SamplingOptions,
    SpeculativeOptions,
    sampling,
)

V = 8
CONFIG = DecoderConfig(dim=16, heads=2, layers=2, hidden=32, exit_after=(1, 2),
                       max_positions=16, vocab_size=V, eos_token_id=None)  # fmt: skip
PROMPT = [1, 2, 3]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    torch.manual_seed(1)
    model = MultiExitDecoder(CONFIG).eval()
    with torch.no_grad():  # the second layer moves the hidden state far: q and p differ
        model.lm_head.weight.mul_(2.0)
        model.layers[1].down_proj.weight.mul_(4.0)
        model.layers[1].o_proj.weight.mul_(4.0)
    bundle = tmp_path_factory.mktemp("sampling") / "bundle"
    export_decoder(model, bundle)
    return model, Generator(bundle, threads=1)


def exact_joint(model, options: SamplingOptions) -> np.ndarray:
    """P(t1, t2, t3) when each token is drawn from the full model's (last exit's)
    distribution after ``options``: [V, V, V]."""
    seqs = [PROMPT + [a, b] for a in range(V) for b in range(V)]
    with torch.no_grad():
        last = model(torch.tensor(seqs))[-1].numpy()  # [V*V, len, V]
    n = len(PROMPT)

    def p(row, position):
        return sampling.probabilities(last[row, position], options)

    joint = np.zeros((V, V, V))
    first = p(0, n - 1)
    for a in range(V):
        second = p(a * V, n)
        for b in range(V):
            joint[a, b] = first[a] * second[b] * p(a * V + b, n + 1)
    return joint


def sampled_counts(gen, runs: int, options: SamplingOptions, **kwargs) -> np.ndarray:
    counts = np.zeros((V, V, V))
    for seed in range(runs):
        seeded = SamplingOptions(options.temperature, options.top_k, options.top_p, seed)
        out = gen.generate(PROMPT, max_new_tokens=3, sampling=seeded, **kwargs)
        counts[out.tokens] += 1
    return counts


def chi_square_z(counts: np.ndarray, probabilities: np.ndarray) -> float:
    """How far counts are from the distribution, as a standard normal deviate (Wilson and
    Hilferty's cube-root form of Pearson's chi-square; cells expecting fewer than 5 are
    pooled into one). A count where the probability is 0 is infinitely far."""
    counts, probabilities = counts.ravel(), probabilities.ravel()
    if counts[probabilities == 0].sum() > 0:
        return math.inf
    expected = probabilities * counts.sum()
    big = expected >= 5
    observed = np.append(counts[big], counts[~big & (probabilities > 0)].sum())
    wanted = np.append(expected[big], expected[~big].sum())
    observed, wanted = observed[wanted > 0], wanted[wanted > 0]
    statistic = float(((observed - wanted) ** 2 / wanted).sum())
    df = len(wanted) - 1
    return ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))


Z_1E4 = 3.719  # P(Z > 3.719) = 1e-4: a correct sampler fails once in 10^4 seed sets
SPECULATIVE = {"mode": "self-speculative"}
PLAIN = SamplingOptions(temperature=1.0)
NARROW = SamplingOptions(temperature=0.8, top_k=5, top_p=0.9)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "how"),
    [
        (PLAIN, {"mode": "full"}),
        (PLAIN, {**SPECULATIVE, "speculative": SpeculativeOptions(k=1, gamma=2)}),
        # a draft stop: some positions are not drafted, their token drawn from p itself
        (NARROW, {**SPECULATIVE, "speculative": SpeculativeOptions(k=1, gamma=2,
                                                                   draft_stop=0.5)}),
    ],
    ids=["full", "self-speculative", "top-k-top-p-draft-stop"],
)  # fmt: skip
def test_sampled_tokens_follow_the_full_models_distribution(decoder, options, how):
    model, gen = decoder
    counts = sampled_counts(gen, 4000, options, **how)
    assert chi_square_z(counts, exact_joint(model, options)) < Z_1E4


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    """A model with heads of 16 (fused) and an int4 draft: q is the int4 copy's, p fp32's."""
    torch.manual_seed(1)
    config = DecoderConfig(dim=32, heads=2, layers=2, hidden=32, exit_after=(1, 2),
                           max_positions=16, vocab_size=V, eos_token_id=None)  # fmt: skip
    model = MultiExitDecoder(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
        model.layers[1].down_proj.weight.mul_(4.0)
    bundle = tmp_path_factory.mktemp("sampling") / "drafted"
    export_decoder(model, bundle, draft="int4", block_size=16)
    return model, Generator(bundle, threads=1)


@pytest.mark.slow
def test_a_quantized_draft_keeps_the_full_models_distribution(drafted):
    model, gen = drafted
    assert gen.manifest.draft is not None
    how = {**SPECULATIVE, "speculative": SpeculativeOptions(k=1, gamma=2)}
    counts = sampled_counts(gen, 4000, PLAIN, **how)
    assert chi_square_z(counts, exact_joint(model, PLAIN)) < Z_1E4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("accept", lambda p, q, token, u: True),  # every draft kept: tokens drawn from q
        ("residual", lambda p, q: p),  # a rejected position drawn from p, not p - q
    ],
)
def test_the_distribution_test_rejects_a_wrong_acceptance_rule(decoder, monkeypatch, name, wrong):
    model, gen = decoder
    monkeypatch.setattr(sampling, name, wrong)
    counts = sampled_counts(gen, 4000, PLAIN, mode="self-speculative",
                            speculative=SpeculativeOptions(k=1, gamma=2))  # fmt: skip
    # far past the threshold (a correct sampler's deviate is about N(0, 1); these are 12
    # and 35), not just past it
    assert chi_square_z(counts, exact_joint(model, PLAIN)) > 2 * Z_1E4


def test_the_chi_square_deviate_is_standard_normal_for_a_right_sampler():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(60))
    z = [chi_square_z(np.bincount(rng.choice(60, 3000, p=p), minlength=60), p) for _ in range(200)]
    assert abs(np.mean(z)) < 0.3 and 0.8 < np.std(z) < 1.2
    assert chi_square_z(np.array([1.0, 5.0]), np.array([0.0, 1.0])) == math.inf


@pytest.mark.parametrize("mode", ["full", "self-speculative", "early-exit"])
def test_temperature_zero_is_todays_greedy_decoding(decoder, mode):
    _, gen = decoder
    for prompt in (PROMPT, [5], [7, 0, 7, 0, 7]):
        greedy = gen.generate(prompt, max_new_tokens=10, mode=mode, thresholds=[0.3])
        zero = gen.generate(prompt, max_new_tokens=10, mode=mode, thresholds=[0.3],
                            sampling=SamplingOptions(temperature=0))  # fmt: skip
        assert zero.tokens == greedy.tokens and zero.seed is None


def test_a_seed_repeats_the_tokens_and_a_call_without_one_reports_its_own(decoder):
    _, gen = decoder
    seeded = SamplingOptions(temperature=1.5, seed=7)
    for mode in ("full", "self-speculative"):
        first = gen.generate(PROMPT, max_new_tokens=12, mode=mode, sampling=seeded)
        assert gen.generate(PROMPT, max_new_tokens=12, mode=mode, sampling=seeded).tokens == (
            first.tokens
        )
        assert first.seed == 7 and first.to_json(2)["seed"] == 7
    others = {gen.generate(PROMPT, max_new_tokens=12, sampling=SamplingOptions(temperature=1.5,
                                                                               seed=s)).tokens
              for s in range(8)}  # fmt: skip
    assert len(others) > 1  # sampled, not greedy
    fresh = gen.generate(PROMPT, max_new_tokens=12, sampling=SamplingOptions(temperature=1.5))
    again = SamplingOptions(temperature=1.5, seed=fresh.seed)
    assert gen.generate(PROMPT, max_new_tokens=12, sampling=again).tokens == fresh.tokens
    # early-exit that never exits early draws one number per token, as full does
    never = gen.generate(PROMPT, max_new_tokens=12, mode="early-exit", thresholds=[math.inf],
                         sampling=seeded)  # fmt: skip
    assert never.tokens == gen.generate(PROMPT, max_new_tokens=12, sampling=seeded).tokens


def test_the_distribution_a_token_is_drawn_from():
    logits = np.array([2.0, 1.0, 1.0, 0.0, -1.0])
    plain = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(sampling.probabilities(logits, SamplingOptions()), plain)
    hot = np.exp(logits / 2) / np.exp(logits / 2).sum()
    assert np.allclose(sampling.probabilities(logits, SamplingOptions(temperature=2.0)), hot)
    top2 = sampling.probabilities(logits, SamplingOptions(top_k=2))  # the tie with the 2nd kept
    assert np.allclose(top2, np.r_[plain[:3] / plain[:3].sum(), 0, 0])
    assert np.allclose(sampling.probabilities(logits, SamplingOptions(top_k=99)), plain)
    # top-p: the fewest most likely tokens reaching it (the first holds 0.52), renormalized;
    # of two tied, the first
    two = sampling.probabilities(logits, SamplingOptions(top_p=0.6))
    assert np.allclose(two, np.r_[plain[:2] / plain[:2].sum(), 0, 0, 0])
    assert np.allclose(sampling.probabilities(logits, SamplingOptions(top_p=0.5)), [1, 0, 0, 0, 0])
    cold = sampling.probabilities(logits * 1e3, SamplingOptions(temperature=1e-300))
    assert cold.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # no overflow into NaN
    draws = sampling.Sampler(SamplingOptions(top_k=1, seed=0))
    assert {draws.pick(logits) for _ in range(50)} == {0}  # a token of probability 0: never


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1}, "`temperature` is -1; expected a finite number >= 0"),
        ({"temperature": math.inf}, "`temperature` is inf"),
        ({"temperature": "hot"}, "`temperature` is 'hot'"),
        ({"top_k": 0}, "`top_k` is 0; expected a positive integer"),
        ({"top_k": 2.0}, "`top_k` is 2.0"),
        ({"top_k": True}, "`top_k` is True"),
        ({"top_p": 0}, "`top_p` is 0; expected a number in (0, 1]"),
        ({"top_p": 1.5}, "`top_p` is 1.5"),
        ({"top_p": math.nan}, "`top_p` is nan"),
        ({"seed": -1}, "`seed` is -1; expected an integer >= 0"),
        ({"seed": 1.5}, "`seed` is 1.5"),
        ({"temperature": 0, "top_k": 5}, "`temperature` 0 is greedy decoding, where `top_k`"),
        ({"temperature": 0, "top_p": 0.9}, "where `top_p` changes nothing"),
    ],
)
def test_sampling_options_are_checked_when_built(kwargs, message):
    with pytest.raises(InputError) as err:
        SamplingOptions(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_generate_takes_only_sampling_options(decoder):
    _, gen = decoder
    with pytest.raises(InputError, match="`sampling` is dict; expected SamplingOptions"):
        gen.generate(PROMPT, max_new_tokens=4, sampling={"temperature": 1.0})


def test_the_calibrated_modes_reason_speaks_of_sampled_output_when_sampling():
    from edgeexit.generation import chosen_mode

    report = {"min_agreement": 0.9, "held_out_agreement": 0.95, "held": True,
              "speculative_speedup": 1.5, "early_exit_speedup": 1.2}  # fmt: skip
    recorded = {"self_speculative": {"k": 1, "gamma": 3, "draft_stop": 0.0},
                "early_exit": [0.5, None], "report": report}  # fmt: skip
    assert "the same tokens as full" in chosen_mode(recorded).why
    assert "the same distribution as full" in chosen_mode(recorded, sampled=True).why
    faster = {**recorded, "report": {**report, "early_exit_speedup": 2.0}}
    assert chosen_mode(faster, sampled=True).why.endswith("(at least 90% asked), greedy")
