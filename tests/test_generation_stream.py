"""Stop sequences, streaming and several prompts, from Python and the command line.

A stop sequence cuts the text before it, in every mode, greedy or sampled: the output is
the same call's output without the stop, cut at the stop's first occurrence (a stop does
not change what is decoded before it, so this holds token for token, even where the stop
ends inside a verification's accepted drafts). A stream is the generation, token by
token, with tokens that may begin a stop held back until they do not.
"""

from __future__ import annotations

import json
import threading

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
    text,
)
from edgeexit.generation.transcript import Transcript  # noqa: E402

BYTES = DecoderConfig(dim=32, heads=2, layers=3, hidden=64, exit_after=(1, 2, 3),
                      max_positions=128, eos_token_id=None)  # fmt: skip
IDS = DecoderConfig(dim=16, heads=2, layers=2, hidden=32, exit_after=(1, 2), max_positions=48,
                    vocab_size=40, eos_token_id=None)  # fmt: skip
PROMPT = text.encode("def main(")
SPEC = SpeculativeOptions(k=1, gamma=6)
WAYS = {  # mode and its settings: each decodes differently
    "full": {"mode": "full"},
    "self-speculative": {"mode": "self-speculative", "speculative": SPEC},
    "early-exit": {"mode": "early-exit", "thresholds": [0.5, 0.5]},
}
SEEDED = SamplingOptions(temperature=1.2, seed=3)


def peaked(config, out, **kwargs):
    torch.manual_seed(0)
    model = MultiExitDecoder(config).eval()
    with torch.no_grad():  # confident exits, drafts often accepted
        model.lm_head.weight.mul_(8.0)
    export_decoder(model, out, **kwargs)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return peaked(BYTES, tmp_path_factory.mktemp("stream") / "bytes", tokenizer=text.BYTES)


@pytest.fixture(scope="module")
def gen(bundle):
    return Generator(bundle, threads=1)


@pytest.fixture(scope="module")
def ids_bundle(tmp_path_factory):
    return peaked(IDS, tmp_path_factory.mktemp("stream") / "ids")


def cut_at_stop(tokens, stops):
    """The tokens before the first place where they end with a stop."""
    tokens = list(tokens)
    for end in range(1, len(tokens) + 1):
        for stop in stops:
            if end >= len(stop) and tokens[end - len(stop) : end] == list(stop):
                return tokens[: end - len(stop)]
    return tokens


@pytest.mark.parametrize("sampling", [None, SEEDED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("way", list(WAYS))
def test_a_stop_sequence_ends_the_text_before_it(gen, way, sampling):
    plain = gen.generate(PROMPT, max_new_tokens=40, sampling=sampling, **WAYS[way]).tokens
    for start, length in ((0, 1), (3, 2), (10, 3), (25, 2)):
        stop = list(plain[start : start + length])
        out = gen.generate(PROMPT, max_new_tokens=40, sampling=sampling, stop=[stop], **WAYS[way])
        assert list(out.tokens) == cut_at_stop(plain, [stop]) and out.stopped == "stop"
        assert len(out.exits) == (len(out.tokens) if way == "early-exit" else 0)
    absent = gen.generate(PROMPT, max_new_tokens=40, sampling=sampling, stop=[[256, 256]],
                          **WAYS[way])  # fmt: skip
    assert absent.tokens == plain and absent.stopped == "max_new_tokens"


def test_a_stop_inside_an_accepted_draft_cuts_there(gen, monkeypatch):
    decided = []  # the tokens each step decided together
    real_add = Transcript.add
    monkeypatch.setattr(Transcript, "add", lambda self, t: (decided.append(list(t)),
                                                            real_add(self, t))[1])  # fmt: skip
    plain = gen.generate(PROMPT, max_new_tokens=40, **WAYS["self-speculative"]).tokens
    starts = np.cumsum([0] + [len(d) for d in decided])
    inside = [(s, len(d)) for s, d in zip(starts, decided) if len(d) >= 3]
    assert inside, decided  # the peaked model accepts drafts
    start, size = inside[0]
    stop = list(plain[start : start + 2])  # ends on the chunk's second token of `size`
    decided.clear()
    out = gen.generate(PROMPT, max_new_tokens=40, stop=[stop], **WAYS["self-speculative"])
    assert list(out.tokens) == cut_at_stop(plain, [stop]) and out.stopped == "stop"
    assert len(decided[-1]) == size  # the stop came in the middle of the verification's tokens


@pytest.mark.parametrize("sampling", [None, SEEDED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("way", list(WAYS))
def test_a_stream_is_the_generation_token_by_token(gen, way, sampling):
    plain = gen.generate(PROMPT, max_new_tokens=30, sampling=sampling, **WAYS[way]).tokens
    stops = [[plain[12], plain[13], 256], list(plain[14:16])]  # the first begins, never ends
    whole = gen.generate(PROMPT, max_new_tokens=30, sampling=sampling, stop=stops, **WAYS[way])
    stream = gen.stream(PROMPT, max_new_tokens=30, sampling=sampling, stop=stops, **WAYS[way])
    assert tuple(stream) == whole.tokens and stream.result.tokens == whole.tokens
    assert stream.result.stopped == whole.stopped == "stop"
    pieces = list(text.pieces(gen.stream(PROMPT, max_new_tokens=30, sampling=sampling,
                                         **WAYS[way])))  # fmt: skip
    assert "".join(pieces) == text.decode(plain)


def test_a_streamed_token_comes_as_soon_as_it_is_decided(gen, monkeypatch):
    calls = []
    real = gen.head.run
    monkeypatch.setattr(gen.head, "run", lambda hidden: (calls.append(1), real(hidden))[1])
    stream = gen.stream(PROMPT, max_new_tokens=20)
    assert not calls  # checked now, decoded when read
    next(stream)
    assert len(calls) == 1 and stream.result is None  # the prefill's token, nothing more
    next(stream)
    assert len(calls) == 2
    stream.close()


def test_an_open_stream_holds_the_generator_until_it_ends_or_closes(gen):
    want = gen.generate(PROMPT, max_new_tokens=8).tokens
    stream = gen.stream(PROMPT, max_new_tokens=8)
    next(stream)
    with pytest.raises(InputError, match="in the middle of a stream in this thread"):
        gen.generate(PROMPT, max_new_tokens=8)
    other = []
    waiting = threading.Thread(target=lambda: other.append(gen.generate(PROMPT, max_new_tokens=8)))
    waiting.start()
    waiting.join(0.2)
    assert not other  # another thread waits for the stream
    stream.close()
    waiting.join()
    assert other[0].tokens == want
    with gen.stream(PROMPT, max_new_tokens=8) as tokens:
        assert next(tokens) == want[0]
    assert gen.generate(PROMPT, max_new_tokens=8).tokens == want  # `with` closed it


def test_the_transcript_holds_back_what_may_begin_a_stop():
    out = Transcript(10, frozenset({99}), ((1, 2, 3), (2, 4)))
    out.add([5, 1])
    assert out.settled() == 1  # 1 may begin (1, 2, 3)
    out.add([2])
    assert out.settled() == 1  # 1 2 still may; 2 may begin (2, 4)
    out.add([5])
    assert out.settled() == 4 and not out.done
    out.add([2, 3, 7])  # nothing begun ends: 2 3 is not 2 4
    assert out.tokens == [5, 1, 2, 5, 2, 3, 7] and out.settled() == 7
    both = Transcript(10, frozenset(), ((3,), (2, 3)))
    both.add([1, 2, 3, 4])  # two stops end together: the longer goes, 4 is never added
    assert both.tokens == [1] and both.stopped == "stop" and both.generated == 3
    eos = Transcript(10, frozenset({3}), ((2, 3),))
    eos.add([2, 3])  # the end of text is kept and says so
    assert eos.tokens == [2, 3] and eos.stopped == "eos"
    limit = Transcript(3, frozenset(), ((9, 9),))
    limit.add([9, 1, 9, 9])
    assert limit.tokens == [9, 1, 9] and limit.stopped == "max_new_tokens"
    assert limit.settled() == 3  # ended: nothing held back


@pytest.mark.parametrize(
    ("stop", "message"),
    [
        (["", "x"], "stop sequence 0 is empty"),
        ([[]], "stop sequence 0 is empty"),
        ([[1, 300]], "stop sequence 0 holds token id 300, outside the vocabulary; expected 0..256"),
        ([1, 2], r"stop sequence 0 is 1; expected text or a list of token ids \(`stop` is a list"),
        ([[1.0]], "stop sequence 0 is"),
        (b"ab", "`stop` is bytes; expected a list of stop sequences"),
        (7, "`stop` is int"),
        (["\udc80"], "stop sequence 0 is not UTF-8 text"),
    ],
)
def test_bad_stop_sequences_are_one_line_errors(gen, stop, message):
    with pytest.raises(InputError, match=message) as err:
        gen.generate(PROMPT, max_new_tokens=4, stop=stop)
    assert "\n" not in str(err.value)


def test_text_stops_need_a_byte_level_bundle(ids_bundle):
    ids = Generator(ids_bundle, threads=1)
    with pytest.raises(InputError, match="stop sequence 0 is text, but this bundle has no byte"):
        ids.generate([1, 2], max_new_tokens=4, stop=["\n"])
    assert ids.generate([1, 2], max_new_tokens=4, stop=[[39, 39]]).stopped == "max_new_tokens"
    first = ids.generate([1, 2], max_new_tokens=4).tokens[:1]
    assert ids.generate([1, 2], max_new_tokens=4, stop=[np.array(first)]).tokens == ()


def test_text_pieces_wait_for_a_whole_character_and_join_into_the_text():
    word = list("é€a".encode()) + [300]  # 2 + 3 bytes, a byte, an id that is no text
    assert list(text.pieces(word)) == ["é", "€", "a"]
    rng = np.random.default_rng(0)
    for _ in range(50):  # broken UTF-8 too: the same replacement characters
        tokens = rng.integers(0, 260, 30)
        assert "".join(text.pieces(tokens)) == text.decode(tokens)


def test_generate_many_is_generate_for_each_prompt(gen, monkeypatch):
    prompts = [PROMPT, text.encode("import os\n"), [120]]
    for sampling in (None, SEEDED):
        many = gen.generate_many(prompts, max_new_tokens=12, sampling=sampling,
                                 **WAYS["self-speculative"])  # fmt: skip
        alone = [gen.generate(p, max_new_tokens=12, sampling=sampling,
                              **WAYS["self-speculative"]) for p in prompts]  # fmt: skip
        assert [m.tokens for m in many] == [a.tokens for a in alone]
    calls = []
    monkeypatch.setattr(gen.head, "run", lambda hidden: calls.append(1))
    with pytest.raises(InputError, match="prompt 1: prompt id 999 at position 0"):
        gen.generate_many([PROMPT, [999]], max_new_tokens=4)
    assert not calls  # checked before any was decoded
    with pytest.raises(InputError, match="the prompts are str; expected a list of prompts"):
        gen.generate_many("def", max_new_tokens=4)


# -- the command line ---------------------------------------------------------------------


def cli(*args):
    from typer.testing import CliRunner

    from edgeexit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_generate_stops_samples_and_streams_from_the_command_line(gen, bundle):
    plain = gen.generate(PROMPT, max_new_tokens=30).tokens
    ascii_at = next(i for i, t in enumerate(plain) if 32 < t < 127 and i > 2)
    stop = chr(plain[ascii_at])
    result = cli("generate", bundle, "-p", "def main(", "-n", 30, "--stop", stop, "--json")
    doc = json.loads(result.stdout)
    assert doc["tokens"] == cut_at_stop(plain, [[plain[ascii_at]]]) and doc["stopped"] == "stop"
    assert doc["sampling"] is None and doc["seed"] is None
    newline = cli("generate", bundle, "-p", "def main(", "--stop", "a\\n\\\\", "--json")
    assert newline.exit_code == 0, newline.output  # 'a', a newline, a backslash: escapes read
    seeded = ("-p", "def main(", "-n", 20, "--temperature", 1.2, "--top-k", 50, "--seed", 5)
    one = json.loads(cli("generate", bundle, *seeded, "--json").stdout)
    want = gen.generate(PROMPT, max_new_tokens=20,
                        sampling=SamplingOptions(temperature=1.2, top_k=50, seed=5))  # fmt: skip
    assert one["tokens"] == list(want.tokens) and one["seed"] == 5
    assert one["sampling"] == {"temperature": 1.2, "top_k": 50, "top_p": None, "seed": 5}
    streamed = cli("generate", bundle, *seeded, "--stream")
    whole = cli("generate", bundle, *seeded)  # not a terminal: printed whole
    assert streamed.exit_code == whole.exit_code == 0, streamed.output
    assert streamed.stdout == whole.stdout == text.decode(want.tokens) + "\n"
    assert "sampled at temperature 1.2, top-k 50, seed 5" in streamed.stderr


def test_several_prompts_from_the_command_line(gen, bundle, tmp_path):
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps(["def main(", [105, 109]]))
    want = [gen.generate(p, max_new_tokens=6).tokens for p in (PROMPT, [105, 109])]
    doc = json.loads(cli("generate", bundle, "--prompts", listed, "-n", 6, "--json").stdout)
    assert [d["tokens"] for d in doc] == [list(w) for w in want]
    repeated = cli("generate", bundle, "-p", "def main(", "-p", "im", "-n", 6)
    assert repeated.exit_code == 0, repeated.output
    assert repeated.stdout == "".join(text.decode(w) + "\n" for w in want)
    assert "text (prompt 2 of 2):" in repeated.stderr and "2 prompts, one after" in repeated.stderr
    (tmp_path / "bad.json").write_text(json.dumps(["def", [999]]))
    bad = cli("generate", bundle, "--prompts", tmp_path / "bad.json", "-n", 6)
    assert bad.exit_code == 1 and "error: prompt 1: prompt id 999" in bad.stderr
    assert bad.stdout == ""  # checked before any was decoded


def test_streaming_is_the_default_on_a_terminal_and_never_for_json(bundle, monkeypatch):
    import edgeexit.cli.generate as command

    seen = []
    real = command._pieces
    monkeypatch.setattr(command, "_pieces", lambda t, b: (seen.append(type(t).__name__),
                                                          real(t, b))[1])  # fmt: skip
    monkeypatch.setattr(command, "_on_terminal", lambda: True)
    assert cli("generate", bundle, "-p", "x", "-n", 4).exit_code == 0
    monkeypatch.setattr(command, "_on_terminal", lambda: False)
    assert cli("generate", bundle, "-p", "x", "-n", 4).exit_code == 0
    assert cli("generate", bundle, "-p", "x", "-n", 4, "--stream").exit_code == 0
    assert seen == ["Stream", "tuple", "Stream"]


def test_generate_refuses_bad_sampling_and_stop_options_in_one_line(bundle, ids_bundle):
    cases = [
        (("--temperature", "-1"), "expected a number >= 0"),
        (("--temperature", "nan"), "expected a number >= 0"),
        (("--top-p", "0"), "expected a number in (0, 1]"),
        (("--top-p", "1.5"), "expected a number in (0, 1]"),
        (("--top-k", "0"), "--top-k"),
        (("--seed", "-1"), "--seed"),
        (("--temperature", "0", "--top-k", "3"), "--temperature 0 is greedy decoding, where "
         "--top-k changes nothing"),
        (("--stop", "\\q"), "holds the escape \\q; expected \\n, \\t, \\r or \\\\"),
        (("--stop", ""), "an empty stop sequence"),
        (("--stop", "\udcff"), "holds a byte that is no UTF-8 character; expected text"),
        (("--stream", "--json"), "--stream prints text as it comes, --json one document"),
    ]  # fmt: skip
    for args, message in cases:
        result = cli("generate", bundle, "-p", "x", "-n", 4, *args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.exit_code == 2 and len(errors) == 1, (args, result.output)
        assert message in errors[0], errors[0]
    ids = cli("generate", ids_bundle, "--prompts", _ids_file(ids_bundle), "--stop", "a,b")
    assert ids.exit_code == 2 and "'a,b' is not token ids; expected ID,ID" in ids.stderr
    fine = cli("generate", ids_bundle, "--prompts", _ids_file(ids_bundle), "--stop", "1,2",
               "--json")  # fmt: skip
    assert fine.exit_code == 0, fine.output


def _ids_file(bundle):
    path = bundle.parent / "prompts.json"
    path.write_text(json.dumps([[1, 2, 3]]))
    return path


def test_the_json_text_is_the_models_even_where_it_looks_like_a_parameter(bundle, monkeypatch):
    # the JSON went through in_flags, which rewrote `max_new_tokens` as --max-new-tokens
    monkeypatch.setattr(text, "decode", lambda tokens: "set `max_new_tokens` here")
    doc = json.loads(cli("generate", bundle, "-p", "x", "-n", 2, "--json").stdout)
    assert doc["text"] == "set `max_new_tokens` here"
