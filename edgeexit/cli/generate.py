"""`edgeexit generate BUNDLE --prompt TEXT`: early-exit text generation on the device."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from edgeexit.cli import params
from edgeexit.cli.core import command, usage_error
from edgeexit.errors import InputError
from edgeexit.files import dumps_json
from edgeexit.generation import (
    MODES,
    Generation,
    Generator,
    ModeChoice,
    SamplingOptions,
    SpeculativeOptions,
    Stream,
    chosen_mode,
    text,
)
from edgeexit.generation.prompts import read_ids, read_prompts

Mode = params.choice("Mode", MODES)


@command("generate")
def generate_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A decoder bundle directory."),
    prompt: list[str] = typer.Option(
        None,
        "--prompt",
        "-p",
        metavar="TEXT",
        help="Text (byte-level bundles); repeat for several prompts.",
    ),  # fmt: skip
    prompt_ids: list[Path] = typer.Option(
        None,
        "--prompt-ids",
        metavar="FILE",
        help="Token ids: a .npy array or a text file of integers; repeatable.",
    ),  # fmt: skip
    prompts: Path = typer.Option(
        None,
        "--prompts",
        metavar="FILE",
        help="A .json list of prompts (text, or lists of token ids).",
    ),  # fmt: skip
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=1, help="At most."),
    mode: Mode = typer.Option(
        None,
        "--mode",
        "-m",
        help="How tokens are decoded (default: what calibrate-generation chose, else full).",
    ),
    k: int = typer.Option(None, "--k", min=1, help="Self-speculative: segments that draft."),
    gamma: int = typer.Option(None, "--gamma", min=1, help="Self-speculative: most drafts."),
    draft_stop: float = typer.Option(
        None,
        "--draft-stop",
        parser=params.share,
        metavar="P",
        help="Self-speculative: stop drafting below this confidence.",
    ),  # fmt: skip
    thresholds: str = typer.Option(
        None,
        "--thresholds",
        metavar="T1,T2,...",
        help="Early-exit: confidence to leave at each exit but the last.",
    ),  # fmt: skip
    temperature: float = typer.Option(
        None,
        "--temperature",
        parser=params.temperature,
        metavar="T",
        help="Sample at this temperature (0: greedy, the default without sampling options).",
    ),  # fmt: skip
    top_k: int = typer.Option(None, "--top-k", min=1, help="Sample from the K likeliest tokens."),
    top_p: float = typer.Option(
        None,
        "--top-p",
        parser=params.top_p,
        metavar="P",
        help="Sample from the fewest likeliest tokens whose probabilities reach P, in (0, 1].",
    ),  # fmt: skip
    seed: int = typer.Option(
        None, "--seed", min=0, help="Repeatable sampling (default: a fresh seed, reported)."
    ),
    stop: list[str] = typer.Option(
        None,
        "--stop",
        metavar="TEXT",
        help="End the text before this (repeatable). Text, where \\n, \\t and \\r are a "
        "newline, a tab and a return; token ids ID,ID,... for bundles without a byte-level "
        "tokenizer.",
    ),  # fmt: skip
    stream: bool = typer.Option(
        False, "--stream", help="Print tokens as they come, into a pipe too (a terminal: always)."
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    threads: int = typer.Option(None, "--threads", min=0, help="Intra-op threads (0 = all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Continue prompts, greedily or sampled, in full or with early exits.

    --mode full runs every segment for every token. self-speculative drafts up to --gamma
    tokens with the first --k segments and their exit, then verifies them all at once with
    the remaining segments: greedy, the output is the full model's, token for token;
    sampled, it follows the full model's distribution exactly. early-exit lets each token
    leave at the first exit whose confidence reaches its threshold (sampled, from that
    exit's distribution: not the full model's). Without --mode, the mode calibrate-generation
    measured fastest is used (early-exit only where its agreement with full held on
    held-out prompts), else full; the output says which ran and why. Without
    --k/--gamma/--draft-stop/--thresholds, what calibrate chose is used.

    Decoding is greedy unless --temperature (above 0), --top-k, --top-p or --seed is given.
    Several prompts (--prompt or --prompt-ids repeated, or --prompts FILE) are decoded one
    after another, not batched: the caches hold one sequence. The text goes to stdout,
    everything else to stderr, and on a terminal the text is printed as it is decided
    (--stream: into a pipe or a file too; --json never streams).

    Examples:

        edgeexit generate bundle/ --prompt "def main(" -n 64 --mode self-speculative

        edgeexit generate bundle/ -p "def main(" --temperature 0.8 --top-p 0.95 --stop '\\n\\n'

        edgeexit generate bundle/ --prompt-ids ids.npy --mode early-exit --thresholds 0.9,0.8
    """
    if stream and as_json:
        raise usage_error("--stream prints text as it comes, --json one document at the end: "
                          "give one of them")  # fmt: skip
    _one_kind_of_prompt(prompt, prompt_ids, prompts)
    sampling = _sampling(temperature, top_k, top_p, seed)
    generator = Generator(bundle, target=target, threads=threads)
    ids = _prompts(generator.byte_level, prompt, prompt_ids, prompts)
    spec_given = {"--k": k, "--gamma": gamma, "--draft-stop": draft_stop}
    sampled = sampling is not None and not sampling.greedy
    choice = _mode(mode, spec_given, thresholds, generator.manifest.generation, sampled)
    exits = None if thresholds is None else params.number_list(thresholds, "--thresholds")
    options = {
        "max_new_tokens": max_new_tokens, "mode": choice.mode, "sampling": sampling,
        "speculative": _speculative(choice.mode, k, gamma, draft_stop, generator),
        "thresholds": exits, "stop": _stops(stop or [], generator.byte_level),
    }  # fmt: skip
    streams = _streams(generator, ids, options)
    if as_json:
        docs = [_json(_ended(s), generator, choice, sampling) for s in streams]
        # not through in_flags: the generated text is the model's, backquotes and all
        typer.echo(dumps_json(docs[0] if len(docs) == 1 else docs))
        return
    errors = Console(stderr=True)
    errors.print(_mode_line(choice, sampling), markup=False, highlight=False, soft_wrap=True)
    live = stream or _on_terminal()
    outs = [
        _show(s, i, len(streams), generator.byte_level, live, errors) for i, s in enumerate(streams)
    ]
    errors.print(_summary(outs, generator.num_exits))


def _on_terminal() -> bool:
    return sys.stdout.isatty()


def _prompts(
    byte_level: bool, texts: list[str] | None, id_files: list[Path] | None, listed: Path | None
) -> list[np.ndarray]:
    """The prompts, from the one kind of option given."""
    if texts:
        if not byte_level:
            raise usage_error("this bundle has no byte-level tokenizer: pass --prompt-ids FILE")
        return [text.encode(t) for t in texts]
    if id_files:
        return [read_ids(path) for path in id_files]  # as read: ids named as written
    return read_prompts(listed, byte_level)


def _one_kind_of_prompt(texts: object, id_files: object, listed: object) -> None:
    if sum(bool(given) for given in (texts, id_files, listed)) != 1:
        raise usage_error(
            "give the prompts as --prompt TEXT or --prompt-ids FILE (either repeated), or "
            "--prompts FILE.json: one of them"
        )


def _mode(
    mode: object, spec_given: dict[str, object], thresholds: str | None, recorded: dict,
    sampled: bool,
) -> ModeChoice:  # fmt: skip
    """The mode asked for; else the one the flags given imply; else what calibrate-generation
    recorded (``chosen_mode``)."""
    spec_flags = [flag for flag, value in spec_given.items() if value is not None]
    if mode is not None:  # another mode's flags are ignored (scripts pass them all)
        return ModeChoice(Mode(mode).value, "asked for with --mode")
    if spec_flags and thresholds is not None:
        raise usage_error(
            f"{spec_flags[0]} is self-speculative's and --thresholds early-exit's: give --mode"
        )
    if spec_flags:
        return ModeChoice("self-speculative", f"implied by {spec_flags[0]}")
    if thresholds is not None:
        return ModeChoice("early-exit", "implied by --thresholds")
    return chosen_mode(recorded, sampled=sampled)


def _speculative(
    mode: str, k: int | None, gamma: int | None, draft_stop: float | None, generator: Generator
) -> SpeculativeOptions | None:
    """The flags given over what calibrate chose; None (the recorded settings) if none."""
    given = {"k": k, "gamma": gamma, "draft_stop": draft_stop}
    if mode != "self-speculative" or all(v is None for v in given.values()):
        return None
    chosen = {**generator.manifest.generation.get("self_speculative", {})}
    return SpeculativeOptions(**{**chosen, **{n: v for n, v in given.items() if v is not None}})


def _sampling(
    temperature: float | None, top_k: int | None, top_p: float | None, seed: int | None
) -> SamplingOptions | None:
    """Greedy (None) unless a sampling option is given; then temperature 1 unless given."""
    if all(v is None for v in (temperature, top_k, top_p, seed)):
        return None
    try:
        return SamplingOptions(1.0 if temperature is None else temperature, top_k, top_p, seed)
    except InputError as err:  # options that contradict each other: a usage error
        raise usage_error(str(err)) from None


def _stops(given: list[str], byte_level: bool) -> list[str | list[int]]:
    """--stop values: text with escapes (byte-level bundles), else token ids."""
    if any(not s for s in given):
        raise typer.BadParameter("an empty stop sequence; expected text or token ids",
                                 param_hint="'--stop'")  # fmt: skip
    if byte_level:
        return [_stop_text(s) for s in given]
    return [_stop_ids(s) for s in given]


def _stop_text(given: str) -> str:
    try:
        given.encode()
    except UnicodeEncodeError:  # a byte the shell passed that is no UTF-8 character
        raise typer.BadParameter(
            f"{given!r} holds a byte that is no UTF-8 character; expected text",
            param_hint="'--stop'",
        ) from None
    return params.escaped(given, "--stop")


def _stop_ids(given: str) -> list[int]:
    try:
        return [int(t) for t in given.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(
            f"{given!r} is not token ids; expected ID,ID,... (this bundle has no byte-level "
            "tokenizer, so a stop sequence is token ids)",
            param_hint="'--stop'",
        ) from None


def _streams(generator: Generator, prompts: list[np.ndarray], options: dict) -> list[Stream]:
    """A stream per prompt, every prompt checked before any is decoded."""
    streams = []
    for i, ids in enumerate(prompts):
        try:
            streams.append(generator.stream(ids, **options))
        except InputError as err:
            if len(prompts) == 1:
                raise
            raise InputError(f"prompt {i}: {err}") from err
    return streams


def _ended(stream: Stream) -> Generation:
    for _ in stream:
        pass
    return stream.result


def _pieces(tokens: Iterable[int], byte_level: bool) -> Iterator[str]:
    """What stdout shows of tokens, piece by piece: text, or ids with spaces between."""
    if byte_level:
        yield from text.pieces(tokens)
        return
    for i, token in enumerate(tokens):
        yield f" {token}" if i else str(token)


def _show(
    stream: Stream, i: int, n: int, byte_level: bool, live: bool, errors: Console
) -> Generation:
    """One prompt's output on stdout (as it comes, if ``live``), headed on stderr."""
    label = "text" if byte_level else "token ids"
    errors.print(f"{label}:" if n == 1 else f"{label} (prompt {i + 1} of {n}):", style="bold")
    if live:
        for piece in _pieces(stream, byte_level):
            typer.echo(piece, nl=False)  # click flushes each: the reader sees it now
        typer.echo("")
        return stream.result
    out = _ended(stream)
    typer.echo("".join(_pieces(out.tokens, byte_level)))  # stdout: `generate ... > out.txt`
    return out


def _json(
    out: Generation, generator: Generator, choice: ModeChoice, sampling: SamplingOptions | None
) -> dict:
    doc = {**out.to_json(generator.num_exits), "mode_reason": choice.why}
    doc["sampling"] = None if out.seed is None else {**asdict(sampling), "seed": out.seed}
    if generator.byte_level:
        doc["text"] = text.decode(out.tokens)
    return doc


def _mode_line(choice: ModeChoice, sampling: SamplingOptions | None) -> str:
    line = f"mode: {choice.mode} ({choice.why})"
    if sampling is None or sampling.greedy:
        return line
    given = (("temperature", sampling.temperature), ("top-k", sampling.top_k),
             ("top-p", sampling.top_p), ("seed", sampling.seed))  # fmt: skip
    how = ", ".join(f"{name} {value:g}" for name, value in given if value is not None)
    whose = {
        "full": "",
        "self-speculative": "; full's distribution, exactly",
        "early-exit": "; from the exit each token leaves at: not full's distribution",
    }
    return f"{line}; sampled at {how}{whose[choice.mode]}"


def _summary(outs: list[Generation], num_exits: int) -> Table:
    if len(outs) > 1:
        return _summary_of_many(outs, num_exits)
    out = outs[0]
    table = Table(title=f"{out.mode}: {len(out.tokens)} new tokens ({out.stopped})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tokens/s", f"{out.tokens_per_s:.1f}")
    table.add_row("seconds", f"{out.seconds:.3f}")
    if out.acceptance_rate is not None:
        table.add_row("draft acceptance", f"{out.acceptance_rate:.1%} of {out.drafted}")
        table.add_row("verification calls", str(out.verifications))
    depth = out.mean_exit_depth(num_exits)
    if depth is not None:
        table.add_row("mean exit depth", f"{depth:.1%} of the layers' segments")
    if out.seed is not None:
        table.add_row("seed (--seed repeats it)", str(out.seed))
    return table


def _summary_of_many(outs: list[Generation], num_exits: int) -> Table:
    """A row per prompt; the columns that say something for this mode."""
    columns = {
        "prompt": [str(i) for i in range(1, len(outs) + 1)],
        "new tokens": [str(len(out.tokens)) for out in outs],
        "stopped": [out.stopped for out in outs],
        "tokens/s": [f"{out.tokens_per_s:.1f}" for out in outs],
        "draft acceptance": [_share(out.acceptance_rate) for out in outs],
        "mean exit depth": [_share(out.mean_exit_depth(num_exits)) for out in outs],
        "seed": ["" if out.seed is None else str(out.seed) for out in outs],
    }
    shown = {name: cells for name, cells in columns.items() if any(cells)}
    table = Table(title=f"{outs[0].mode}: {len(outs)} prompts, one after another")
    for name in shown:
        table.add_column(name, justify="left" if name == "stopped" else "right")
    for row in zip(*shown.values()):
        table.add_row(*row)
    return table


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"
