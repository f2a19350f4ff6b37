"""`edgeexit export MODEL.pt -o BUNDLE`: a checkpoint to a validated bundle of ONNX segments;
`edgeexit export --hf DIR --data D.npz -o BUNDLE`: a local Hugging Face folder of an
encoder, its exit heads trained on the data (edgeexit/examples/hf_folder.py); `edgeexit
export --hf DIR -o BUNDLE`: one of a Llama, Mistral or Qwen2, a decoder bundle whose exits
share the model's head (edgeexit/examples/hf_decoder_folder.py).

torch, onnx and transformers are imported inside the command, never at module level: the
device CLI (run, profile, bench, targets) must work with only the runtime installed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgeexit.cli import params
from edgeexit.cli.core import command, usage_error
from edgeexit.cli.progress import progress, unchanged
from edgeexit.criteria import CRITERIA
from edgeexit.files import dumps_json


@command("export")
def export_cmd(
    model: Path = typer.Argument(
        None, metavar="MODEL", help="A checkpoint written by edgeexit.save() (or --hf DIR)."
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", parser=params.output_path, help="The bundle directory to write."
    ),
    criterion: params.Criterion = typer.Option(
        "confidence",
        "--criterion",
        "-c",
        metavar="NAME",
        help=f"Exit score: {', '.join(CRITERIA)}.",
    ),
    patience: int = typer.Option(
        2,
        min=1,
        metavar="N",
        help="With --criterion patience: leave once this many exits in a row agree.",
    ),
    exit_output: params.ExitOutput = typer.Option(
        "logits",
        "--exit-output",
        metavar="KIND",
        help="What every exit gives: logits [batch, classes], or a tensor (an image, a "
        "vector) scored by --criterion gate, q-exit or similarity.",
    ),
    input_shape: list[str] = typer.Option(
        None,
        "--input-shape",
        metavar="SHAPE",
        help="An input's per-sample dims, e.g. 1x8x8, optionally with its name and dtype: "
        "ids=16:int64. Repeat per input.",
    ),
    atol: float = typer.Option(
        1e-4, parser=params.positive, metavar="FLOAT", help="Validation tolerance vs PyTorch."
    ),
    opset: int = typer.Option(
        None, min=7, max=21, metavar="N", help="ONNX opset (default 17, capped by the target)."
    ),
    target: str = typer.Option(
        None, "--target", "-t", parser=params.target, help="Target name or .toml profile."
    ),
    calib_data: Path = typer.Option(
        None,
        "--data",
        "--calib-data",
        help="Data (.npz): with --target, to quantize with and check exits on; with --hf of "
        "an encoder, to train the exit heads on (the inputs by name, labels y).",
    ),
    max_quant_drop: float = params.max_quant_drop_option(),
    bodies: bool = typer.Option(
        True,
        "--bodies/--no-bodies",
        help="Also write each segment without its exit head, run while that exit is "
        "disabled (threshold never), so that its head costs nothing.",
    ),
    max_prefix: int = typer.Option(
        3,
        "--max-prefix",
        min=0,
        metavar="K",
        help="Write a prefix graph for exits 1..K: the bodies before exit k and its segment "
        "as one graph, run in one call while every exit before k is disabled. 0: none.",
    ),
    factory: str = typer.Option(
        None,
        "--factory",
        parser=params.factory,
        metavar="MOD:FN",
        help="Build a factory checkpoint's model with this module:function (a model class "
        "or @checkpointable function, imported) instead of the one the file names, which "
        "edgeexit imports only if it is edgeexit's own or already imported.",
    ),
    trust: bool = typer.Option(
        False, "--trust-pickle", help="Load a pickled nn.Module (runs code from the file)."
    ),
    hf: Path = typer.Option(
        None,
        "--hf",
        metavar="DIR",
        help="Instead of MODEL: a local Hugging Face folder (save_pretrained). A BERT, "
        "RoBERTa, DistilBERT, ALBERT or ViT gets exit heads trained on --data; a Llama, "
        "Mistral or Qwen2 becomes a decoder bundle whose exits share its head (nothing "
        "trained). No code from the folder runs.",
    ),
    exits: str = typer.Option(
        None,
        "--exits",
        parser=params.layers,
        metavar="L1,L2",
        help="With --hf: the layers to exit after (the last always; default every layer, "
        "a decoder's every quarter).",
    ),
    max_positions: int = typer.Option(
        None,
        "--max-positions",
        min=1,
        metavar="N",
        help="With --hf of a decoder: the longest text (prompt and generated tokens) its "
        "caches hold (default: as long as the model takes).",
    ),
    precision: str = typer.Option(
        None,
        "--precision",
        metavar="P",
        help="With --hf of a decoder: fp32 (default), int8 or int4 weights (ONNX Runtime's "
        "MatMulNBits). A classifier's precision comes from its target: edgeexit compile.",
    ),
    block_size: int = typer.Option(
        None,
        "--block-size",
        min=16,
        metavar="N",
        help="With --precision int8/int4: weights quantized in blocks of N inputs (a power "
        "of two, default 32; larger: smaller files, less accurate).",
    ),
    draft: str = typer.Option(
        None,
        "--draft",
        metavar="P",
        help="With --hf of a decoder in fp32: add int8 or int4 copies of its early segments "
        "and head, which self-speculative decoding drafts with (the tokens stay the fp32 "
        "model's; the drafts cost less).",
    ),
    attention: str = typer.Option(
        None,
        "--attention",
        metavar="FORM",
        help="With --hf of a decoder: fused (ONNX Runtime's GroupQueryAttention and fused "
        "norms: fastest; head sizes in multiples of 16), plain (standard ONNX operators) or "
        "auto (default: fused where the head size allows).",
    ),
    prompts: Path = typer.Option(
        None,
        "--prompts",
        metavar="FILE",
        help="With --precision int8/int4: a .json list of prompts (lists of token ids) on "
        "which the quantized model's agreement with fp32 is measured and recorded.",
    ),
    epochs: int = typer.Option(
        None, "--epochs", min=1, metavar="N", help="With --hf: training epochs (default 3)."
    ),
    lr: float = typer.Option(
        None,
        "--lr",
        parser=params.positive,
        metavar="RATE",
        help="With --hf: the heads' learning rate (default 0.003).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export a multi-exit model to a bundle of chained ONNX segments and validate it.

    -o must be a new path, an empty folder, or an earlier bundle (which is replaced in one
    step); the working directory, the model file and any folder holding it are refused.

    Examples:

        edgeexit export model.pt -o bundle

        edgeexit export model.pt -o bundle --criterion entropy --target rpi4 --data cal.npz

        edgeexit export model.pt -o bundle --factory mypkg.models:build

        edgeexit export whole.pt -o bundle --trust-pickle --input-shape 1x8x8

        edgeexit export --hf my-bert/ --data train.npz -o bundle --exits 4,8

        edgeexit export --hf my-llama/ -o lm --exits 4,8 --max-positions 2048

        edgeexit export --hf my-llama/ -o lm-int8 --precision int8 --prompts p.json

        edgeexit export --hf my-llama/ -o lm --draft int4
    """
    from edgeexit.errors import InputError, ValidationError

    kept = f"nothing written; {unchanged(out)}"
    decoder = False
    decoder_flags = {"--max-positions": max_positions, "--precision": precision,
                     "--block-size": block_size, "--attention": attention,
                     "--prompts": prompts, "--draft": draft}  # fmt: skip
    try:
        if hf is None:  # flags that do not go together: refused before torch loads
            _check_model_flags(model, {"--exits": exits, "--epochs": epochs, "--lr": lr,
                                       **decoder_flags})  # fmt: skip
        else:
            not_hf = {"MODEL": model, "--factory": factory, "--trust-pickle": trust or None,
                      "--input-shape": input_shape or None}  # fmt: skip
            _check_hf_flags(not_hf, exit_output)
            decoder = _check_hf_family_flags(
                hf, calib_data, criterion,
                {"--data": calib_data, "--epochs": epochs, "--lr": lr, "--target": target},
                decoder_flags,
            )  # fmt: skip
            form = (
                _decoder_form(precision, block_size, attention, prompts, draft) if decoder else {}
            )
        with progress("export", kept=kept, for_script=as_json) as tell:
            tell("loading torch and onnx", 0, 0)  # seconds on a small machine: say so at once
            import torch  # noqa: F401  (first: a device install, which lacks it, fails at once)

            from edgeexit.export.from_file import export_file
            from edgeexit.export.inputs import parse_input_shape
            from edgeexit.export.options import ExportOptions

            try:
                shapes = [parse_input_shape(s) for s in input_shape or ()]
            except InputError as err:  # a malformed option value: a usage error
                raise typer.BadParameter(str(err), param_hint="'--input-shape'") from None
            criterion = params.Criterion(criterion).value
            given = {"patience": patience}  # each criterion takes the ones it defines
            taken = {k: v for k, v in given.items() if k in CRITERIA[criterion].defaults}
            options = ExportOptions(
                criterion=criterion, criterion_params=taken, opset=opset, atol=atol, target=target,
                calib_data=str(calib_data) if calib_data else None, max_quant_drop=max_quant_drop,
                bodies=bodies, max_prefix=max_prefix, output=params.ExitOutput(exit_output).value,
            )  # fmt: skip
            if hf is None:
                done = result = export_file(
                    model, out, options, input_shapes=shapes, trust_pickle=trust,
                    factory=factory, progress=tell,
                )  # fmt: skip
            elif decoder:
                done = result = _export_hf_decoder(
                    hf, out, options, exits, max_positions, form, tell
                )
            else:
                done = _export_hf(hf, calib_data, out, options, exits, epochs, lr, tell)
                result = done.result
    except ValidationError as err:  # every check, then its one line
        if err.report is not None:
            Console(stderr=as_json).print(err.report)
        raise
    if as_json:
        typer.echo(dumps_json(result.manifest.to_json()))
    else:
        Console().print(done)


def _check_model_flags(model: Path | None, hf_only: dict[str, object]) -> None:
    if model is None:
        raise usage_error(
            "give the model: MODEL (a checkpoint edgeexit.save wrote) or --hf DIR (a Hugging "
            "Face folder)"
        )
    given = [flag for flag, value in hf_only.items() if value is not None]
    if given:
        raise usage_error(f"{given[0]} applies to --hf DIR exports, not to MODEL")


def _check_hf_flags(not_hf: dict[str, object], exit_output: str) -> None:
    given = [flag for flag, value in not_hf.items() if value is not None]
    if given:
        raise usage_error(f"{given[0]} applies to MODEL exports, not to --hf DIR")
    if params.ExitOutput(exit_output).value != "logits":
        raise usage_error("--exit-output: the exits --hf adds give logits")


def _check_hf_family_flags(
    hf: Path, data: Path | None, criterion: str, encoder_only: dict[str, object],
    decoder_only: dict[str, object],
) -> bool:  # fmt: skip
    """The flags the folder's family takes (read from its config.json as data, before
    torch loads); whether it is a decoder."""
    from edgeexit.examples.hf_families import DECODERS, folder_family

    family = folder_family(hf)
    if family in DECODERS:
        given = [flag for flag, value in encoder_only.items() if value is not None]
        if given:
            raise usage_error(
                f"{given[0]} applies to encoder folders: a {family}'s exits share its head, "
                "nothing is trained or quantized"
            )
        if params.Criterion(criterion).value != "confidence":
            raise usage_error(
                f"--criterion: a {family}'s exits score by confidence (the shared head's top "
                "probability), which calibrate-generation thresholds"
            )
        return True
    given = [flag for flag, value in decoder_only.items() if value is not None]
    if given:
        raise usage_error(f"{given[0]} applies to decoder folders, not to a {family}")
    if data is None:
        raise usage_error(
            "export --hf needs --data D.npz to train the exit heads on (the inputs by name: "
            "input_ids and attention_mask, or pixel_values; labels y)"
        )
    return False


def _decoder_form(
    precision: str | None,
    block_size: int | None,
    attention: str | None,
    prompts: Path | None,
    draft: str | None,
) -> dict[str, object]:
    """export_decoder's form arguments from the decoder flags, each checked (usage errors
    before torch loads; the prompts file's content is data, checked as it is read)."""
    from edgeexit.generation.manifest import ATTENTION, BLOCK_SIZES, PRECISIONS
    from edgeexit.generation.prompts import read_prompts

    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise usage_error(f"--precision is {precision!r}; expected one of {', '.join(PRECISIONS)}")
    forms = ("auto", *ATTENTION)
    if (attention or "auto") not in forms:
        raise usage_error(f"--attention is {attention!r}; expected one of {', '.join(forms)}")
    quantized = precision != "fp32"
    if draft is not None and draft not in PRECISIONS[1:]:
        raise usage_error(f"--draft is {draft!r}; expected int8 or int4")
    if draft is not None and quantized:
        raise usage_error(f"--draft applies to fp32 decoders; --precision {precision} drafts "
                          "with its own early segments")  # fmt: skip
    if block_size is not None and not (quantized or draft):
        raise usage_error("--block-size applies to --precision int8 or int4, or --draft")
    if prompts is not None and not quantized:
        raise usage_error("--prompts applies to --precision int8 or int4")
    if block_size is not None and block_size not in BLOCK_SIZES:
        raise usage_error(
            f"--block-size is {block_size}; expected a power of two from 16 to 256 "
            "(what ONNX Runtime's quantizer takes)"
        )
    return {
        "attention": attention or "auto",
        "precision": precision,
        "block_size": block_size or 32,
        "prompts": [p.tolist() for p in read_prompts(prompts, False)] if prompts else (),
        "draft": draft,
    }


def _export_hf(hf, data, out, options, exits, epochs, lr, tell):
    from edgeexit.examples.hf_folder import HeadTraining, export_hf_folder

    given = {"epochs": epochs, "lr": lr}
    training = HeadTraining(**{k: v for k, v in given.items() if v is not None})
    return export_hf_folder(
        hf, data, out, options, exit_after=exits, training=training, progress=tell
    )


def _export_hf_decoder(hf, out, options, exits, max_positions, form, tell):
    from edgeexit.examples.hf_decoder_folder import export_hf_decoder

    return export_hf_decoder(
        hf, out, exit_after=exits, max_positions=max_positions, opset=options.opset,
        atol=options.atol, progress=tell, **form,
    )  # fmt: skip
