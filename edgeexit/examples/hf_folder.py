"""A local Hugging Face model folder to a validated multi-exit bundle, in one step: what
``edgeexit export --hf DIR --data D.npz -o BUNDLE`` does.

The folder is one ``save_pretrained`` wrote (``config.json`` and the weights) for a family
``edgeexit.examples.hf`` adapts: BERT, RoBERTa, DistilBERT and ALBERT encoders, and ViT. The
backbone is loaded as it is, exit heads are attached after every layer (or the layers
``exit_after`` names), only the heads are trained on the data (``train_multi_exit`` with
``freeze_backbone=True``), and the model is exported and validated like any other.

Nothing from the folder runs: the family is read from ``config.json`` as data before
transformers sees the folder; transformers loads it with ``trust_remote_code=False`` (a
config's ``auto_map`` naming code in the folder is not followed) and ``local_files_only=True``
(nothing is downloaded, and a name that is not a folder here never becomes a Hub name);
the weights are safetensors, or a ``.bin`` read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeexit.bundle import BATCH_DIM, InputSpec, check_bundle_output
from edgeexit.data import Dataset, load_data
from edgeexit.errors import CheckpointError, DataError, ExportError, InputError, first_line
from edgeexit.examples.hf import multi_exit_encoder, multi_exit_vit
from edgeexit.examples.hf_families import DECODERS, folder_family
from edgeexit.export.bundle_export import ExportResult, export_bundle
from edgeexit.export.options import ExportOptions
from edgeexit.export.train import train_multi_exit

MAX_CLASSES = 1 << 16  # a head's outputs: labels up to a billion would allocate that many
EXAMPLE_ROWS = 4  # the rows export traces and validates with


@dataclass(frozen=True)
class HeadTraining:
    """How the exit heads learn on the data; the backbone stays as the folder has it."""

    epochs: int = 3
    lr: float = 3e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"`{name}` is {value!r}; expected a positive integer")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise InputError(f"`lr` is {lr!r}; expected a positive learning rate, e.g. 0.003")


@dataclass(frozen=True)
class HfExport:
    """An exported Hugging Face folder: the bundle, and how its heads were trained."""

    result: ExportResult
    family: str
    samples: int
    losses: tuple[float, ...]  # the mean loss of each epoch

    def __rich_console__(self, console, options):
        yield (
            f"trained the exit heads of a {self.family} on {self.samples} samples "
            f"({len(self.losses)} epochs, loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f}); "
            "the backbone is the folder's"
        )
        yield self.result


def export_hf_folder(
    folder: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ExportOptions,
    *,
    exit_after: Sequence[int] | None = None,
    training: HeadTraining = HeadTraining(),
    progress: Callable[[str, int, int], None] | None = None,
) -> HfExport:
    """Load ``folder``, attach exit heads, train them on ``data`` (``.npz``: the inputs by
    name, ``input_ids`` and ``attention_mask`` or ``pixel_values``, and labels ``y``),
    export to ``out_dir`` with ``options`` and validate. ``progress(stage, done, total)``
    follows training step by step, then the export. Every refusal of the folder or the data
    comes before anything is trained or written."""
    tell = progress or (lambda stage, done, total: None)
    folder = Path(folder)
    if options.output != "logits":
        raise ExportError(f"`output` is {options.output!r}; the exit heads give class logits")
    check_bundle_output(out_dir, inputs=(folder, data))  # before the slow part: refuse early
    family = folder_family(folder)
    if family in DECODERS:
        raise CheckpointError(
            f"{folder} holds a {family}, a decoder: its exits share its head and nothing is "
            "trained on data (export_hf_decoder exports it; edgeexit export --hf DIR -o BUNDLE)"
        )
    config = load_config(folder)
    dataset = training_data(data, family, config)
    hf_model = load_backbone(folder, config)
    build = multi_exit_vit if family == "vit" else multi_exit_encoder
    classes = max(int(dataset.labels.max()) + 1, 2)  # labels 0..max; a head has two at least
    model = build(hf_model, classes, exit_after)
    _try_first_rows(model, dataset, data)
    losses = train_multi_exit(
        model, dataset.inputs, dataset.labels, epochs=training.epochs, lr=training.lr,
        batch_size=training.batch_size, freeze_backbone=True,
        on_step=lambda done, steps: tell("training the exit heads", done, steps),
    )  # fmt: skip
    tell("exporting and validating", 0, 1)
    example = tuple(torch.from_numpy(x[:EXAMPLE_ROWS]) for x in dataset.inputs)
    if options.calib_data is None:  # a target quantizes with the same data
        options = replace(options, calib_data=str(data))
    result = export_bundle(model, example, out_dir, options, sources=(folder,))
    return HfExport(result, family, len(dataset), tuple(losses))


def load_config(folder: Path) -> Any:
    """The folder's config as transformers reads it (its own class for the family; an
    ``auto_map`` naming code in the folder is not followed)."""
    import transformers

    with quiet_transformers():
        try:
            return transformers.AutoConfig.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False
            )
        except Exception as err:  # (transformers raises many types for a bad config)
            raise CheckpointError(
                f"{folder}/config.json is not a config transformers can read: {first_line(err)}"
            ) from err


def load_backbone(folder: Path, config: Any) -> torch.nn.Module:
    """The folder's model without its task head (``AutoModel``), in float32, every weight
    the adapter uses read from the folder (a missing one would be random); the pooler is
    not used (the exits bring their own)."""
    return load_pretrained(folder, config, "AutoModel", unused=("pooler.",), what="backbone")


def load_pretrained(
    folder: Path, config: Any, auto: str, *, unused: tuple[str, ...] = (), what: str = "model"
) -> torch.nn.Module:
    """The folder's model as transformers' ``auto`` class (``AutoModel``,
    ``AutoModelForCausalLM``) builds it, in float32, with no code from the folder and
    nothing downloaded; a weight it lacks (but those starting with ``unused``) or holds in
    another shape is refused, not initialized at random."""
    import transformers

    with quiet_transformers():
        try:
            model, info = getattr(transformers, auto).from_pretrained(
                str(folder), config=config, local_files_only=True, trust_remote_code=False,
                output_loading_info=True,
            )  # fmt: skip
        except Exception as err:  # (missing or damaged weights: OSError, ValueError, ...)
            raise CheckpointError(
                f"Hugging Face folder {folder} did not load: {first_line(err)}"
            ) from err
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(unused)]
    wrong = list(info.get("mismatched_keys", ()))
    if missing or wrong:
        name = (missing or [w[0] if isinstance(w, tuple) else w for w in wrong])[0]
        raise CheckpointError(
            f"Hugging Face folder {folder} lacks {len(missing) + len(wrong)} of the model's "
            f"weights (such as {name}) or holds them in another shape; expected the whole "
            f"{what}, as save_pretrained writes it"
        )
    return model.float().eval()


def training_data(path: str | os.PathLike, family: str, config: Any) -> Dataset:
    """The data file, as the backbone can take it: arrays named as its inputs, of its
    sizes, token ids within its vocabulary, a 0/1 mask, and integer labels ``y``."""
    dataset = load_data(path, input_specs(family, config))
    if dataset.labels is None:
        raise DataError(
            f"{path} has no labels 'y'; the exit heads are trained on them (one class number "
            "per sample)"
        )
    top = int(dataset.labels.max())
    if dataset.labels.min() < 0 or top >= MAX_CLASSES:
        raise DataError(
            f"{path}: labels 'y' go from {int(dataset.labels.min())} to {top}; expected class "
            f"numbers 0..C-1 with C at most {MAX_CLASSES}"
        )
    if family != "vit":
        _check_tokens(path, dataset, config)
    return dataset


def input_specs(family: str, config: Any) -> tuple[InputSpec, ...]:
    if family == "vit":
        size = config.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (InputSpec("pixel_values", "float32", (BATCH_DIM, config.num_channels, h, w)),)
    return tuple(
        InputSpec(name, "int64", (BATCH_DIM, "tokens")) for name in ("input_ids", "attention_mask")
    )


def _check_tokens(path: str | os.PathLike, dataset: Dataset, config: Any) -> None:
    ids, mask = dataset.inputs
    if ids.shape != mask.shape:
        raise DataError(
            f"{path}: input_ids {list(ids.shape)} and attention_mask {list(mask.shape)}; "
            "expected one mask value per token"
        )
    if ids.shape[1] == 0:
        raise DataError(f"{path}: input_ids holds sequences of no tokens; expected at least one")
    vocab = config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise DataError(
            f"{path}: input_ids holds token id {bad}; the model's vocabulary is 0..{vocab - 1}"
        )
    if not np.isin(mask, (0, 1)).all():
        raise DataError(f"{path}: attention_mask holds values other than 0 and 1")
    # RoBERTa numbers positions from its padding id + 1
    offset = (config.pad_token_id or 0) + 1 if config.model_type == "roberta" else 0
    room = config.max_position_embeddings - offset
    if ids.shape[1] > room:
        raise DataError(
            f"{path}: sequences of {ids.shape[1]} tokens; the model takes at most {room}"
        )


def _try_first_rows(model: torch.nn.Module, dataset: Dataset, path: str | os.PathLike) -> None:
    """One forward pass on the first rows, so that data the checks above let through but
    the model cannot take fails in one line, before training."""
    rows = tuple(torch.from_numpy(x[:2]) for x in dataset.inputs)
    try:
        with torch.no_grad():
            model.eval()(*rows)
    except (RuntimeError, IndexError, ValueError) as err:
        raise DataError(
            f"{path}: the model cannot run on its first rows: {first_line(err)}"
        ) from err


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load report and progress bars off: the missing weights it reports are
    checked here (``load_backbone``), and a failure raises."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
