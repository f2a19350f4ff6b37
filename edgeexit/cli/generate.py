"""`edgeexit generate BUNDLE --prompt TEXT`: early-exit text generation on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from edgeexit.cli import params
from edgeexit.cli.core import command, in_flags, usage_error
from edgeexit.errors import DataError, first_line
from edgeexit.files import dumps_json
from edgeexit.generation import (
    MODES,
    Generation,
    Generator,
    ModeChoice,
    SpeculativeOptions,
    chosen_mode,
    text,
)

Mode = params.choice("Mode", MODES)


@command("generate")
def generate_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A decoder bundle directory."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Text (byte-level bundles)."),
    prompt_ids: Path = typer.Option(
        None, "--prompt-ids", help="Token ids: a .npy array, or a text file of integers."
    ),
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
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    threads: int = typer.Option(None, "--threads", min=0, help="Intra-op threads (0 = all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Continue a prompt with greedy decoding, in full or with early exits.

    --mode full runs every segment for every token. self-speculative drafts up to --gamma
    tokens with the first --k segments and their exit, then verifies them all at once with
    the remaining segments: the output is the full model's, token for token. early-exit
    lets each token leave at the first exit whose confidence reaches its threshold.
    Without --mode, the mode calibrate-generation measured fastest is used (early-exit
    only where its agreement with full held on held-out prompts), else full; the output
    says which ran and why. Without --k/--gamma/--draft-stop/--thresholds, what calibrate
    chose is used. The text goes to stdout, everything else to stderr.

    Examples:

        edgeexit generate bundle/ --prompt "def main(" -n 64 --mode self-speculative

        edgeexit generate bundle/ --prompt-ids ids.npy --mode early-exit --thresholds 0.9,0.8
    """
    if (prompt is None) == (prompt_ids is None):
        raise usage_error("give the prompt as --prompt TEXT or --prompt-ids FILE (one of them)")
    generator = Generator(bundle, target=target, threads=threads)
    byte_level = generator.manifest.extra.get("tokenizer") == text.BYTES
    if prompt is not None and not byte_level:
        raise usage_error("this bundle has no byte-level tokenizer: pass --prompt-ids FILE")
    ids = _read_ids(prompt_ids) if prompt is None else text.encode(prompt)
    spec_given = {"--k": k, "--gamma": gamma, "--draft-stop": draft_stop}
    choice = _mode(mode, spec_given, thresholds, generator.manifest.generation)
    spec = None
    if choice.mode == "self-speculative" and any(v is not None for v in spec_given.values()):
        chosen = {**generator.manifest.generation.get("self_speculative", {})}
        given = {"k": k, "gamma": gamma, "draft_stop": draft_stop}
        spec = SpeculativeOptions(**{**chosen, **{n: v for n, v in given.items() if v is not None}})
    out = generator.generate(
        ids,  # as read: the generator names an id out of range as it was written
        max_new_tokens=max_new_tokens,
        mode=choice.mode,
        speculative=spec,
        thresholds=None if thresholds is None else params.number_list(thresholds, "--thresholds"),
    )
    said = text.decode(out.tokens) if byte_level else " ".join(str(t) for t in out.tokens)
    if as_json:
        doc = {**out.to_json(generator.num_exits), "mode_reason": choice.why}
        if byte_level:
            doc["text"] = said
        typer.echo(in_flags(dumps_json(doc)))
        return
    errors = Console(stderr=True)
    errors.print(
        f"mode: {choice.mode} ({choice.why})", markup=False, highlight=False, soft_wrap=True
    )
    errors.print("text:" if byte_level else "token ids:", style="bold")
    typer.echo(said)  # stdout holds the text alone: `generate ... > out.txt`
    errors.print(_summary(out, generator.num_exits))


def _mode(
    mode: object, spec_given: dict[str, object], thresholds: str | None, recorded: dict
) -> ModeChoice:
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
    return chosen_mode(recorded)


def _read_ids(path: Path) -> np.ndarray:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"prompt ids {path} {what}; expected a .npy or a text file of integers")
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        else:
            ids = np.array(path.read_text().split(), dtype=np.int64)
    except OverflowError as err:
        raise DataError(f"prompt ids {path} hold a number past int64; expected token ids") from err
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"prompt ids {path} are not integers: {first_line(err)}") from err
    if not isinstance(ids, np.ndarray):  # a .npz archive under a .npy name
        raise DataError(f"prompt ids {path} are an archive of arrays; expected one .npy array")
    if ids.dtype.kind not in "iu":
        raise DataError(f"prompt ids {path} hold {ids.dtype}; expected integers")
    if ids.ndim != 1:
        raise DataError(
            f"prompt ids {path} are an array of shape {list(ids.shape)}; expected one prompt, "
            "a 1-D array of token ids (one sequence per call)"
        )
    return ids


def _summary(out: Generation, num_exits: int) -> Table:
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
    return table
