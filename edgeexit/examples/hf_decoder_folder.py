"""A local Hugging Face folder of a Llama, Mistral or Qwen2 causal LM to a decoder bundle,
in one step: what ``edgeexit export --hf DIR -o BUNDLE`` does for a decoder.

The model converts weight for weight (``hf_llama.llama_to_decoder``), with exits after the
layers ``exit_after`` numbers, and the last; every exit reads the hidden state through the
model's own final norm and LM head (the shared head: nothing is added, nothing is
trained). Full decoding is then the folder's model, token for token; how often an early
exit agrees with it is what the model's training made it (a LayerSkip-trained checkpoint's
early layers predict well, a plain one's rarely), and ``calibrate-generation`` measures it
and chooses accordingly. The folder's tokenizer is not carried: the bundle generates from
token ids (``generate --prompt-ids``).

The folder is read as ``hf_folder`` reads an encoder's: the family from ``config.json`` as
data first, then transformers with ``trust_remote_code=False`` and
``local_files_only=True``; every refusal of the config (a family, scaled rotary positions,
another activation) comes before any weight is loaded, and a weight the folder lacks is
refused, never initialized at random.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeexit.bundle import check_bundle_output
from edgeexit.errors import CheckpointError
from edgeexit.examples.hf import exit_cuts
from edgeexit.examples.hf_families import DECODERS, folder_family
from edgeexit.examples.hf_folder import load_config, load_pretrained
from edgeexit.examples.hf_llama import decoder_config, llama_to_decoder
from edgeexit.export.decoder_export import decoder_form, export_decoder
from edgeexit.export.options import DEFAULT_ATOL, DEFAULT_OPSET
from edgeexit.generation.manifest import DecoderManifest, form_in_words


@dataclass(frozen=True)
class HfDecoderExport:
    """An exported Hugging Face causal LM: its decoder bundle, and what it came from."""

    manifest: DecoderManifest
    family: str
    out_dir: Path

    def __rich_console__(self, console, options):
        m = self.manifest
        exits = ", ".join(map(str, m.extra.get("exit_after", ())))
        yield (
            f"exported a {self.family} of {m.layers} layers as a decoder bundle in "
            f"{self.out_dir}: exits after layers {exits}, sharing the model's final norm and "
            f"LM head; up to {m.max_positions} positions; {form_in_words(m)}; every graph "
            "checked against PyTorch (fp32)"
        )
        yield (
            f"no tokenizer in the bundle: it generates from token ids (edgeexit generate "
            f"{self.out_dir} --prompt-ids FILE); edgeexit calibrate-generation measures how "
            "often the early exits agree with the last"
        )


def export_hf_decoder(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    exit_after: Sequence[int] | None = None,
    max_positions: int | None = None,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    progress: Callable[[str, int, int], None] | None = None,
    **form: Any,
) -> HfDecoderExport:
    """Load ``folder`` (a Llama, Mistral or Qwen2 that ``save_pretrained`` wrote), convert
    it with exits after the layers ``exit_after`` numbers (default: every quarter of the
    layers) and export it to ``out_dir`` as a decoder bundle, every graph validated.
    ``max_positions``: the longest text the caches hold (default the model's). ``form``:
    ``export_decoder``'s attention, precision, block_size and prompts."""
    tell = progress or (lambda stage, done, total: None)
    folder = Path(folder)
    check_bundle_output(out_dir, inputs=(folder,))  # before the slow part: refuse early
    family = folder_family(folder)
    if family not in DECODERS:
        raise CheckpointError(
            f"{folder} holds a {family}, not a decoder ({', '.join(DECODERS)}): its exit heads "
            "are trained on data (export_hf_folder; edgeexit export --hf DIR --data D.npz)"
        )
    config = load_config(folder)
    cuts = decoder_exits(exit_after, config.num_hidden_layers)
    wanted = decoder_config(config, cuts, max_positions=max_positions)  # before the weights
    decoder_form(wanted, form.get("attention", "auto"), form.get("precision", "fp32"),
                 form.get("draft"), form.get("block_size", 32))  # fmt: skip
    tell("loading the model", 0, 0)
    hf_model = load_pretrained(folder, config, "AutoModelForCausalLM", what="model")
    model = llama_to_decoder(hf_model, tuple(cuts), max_positions=max_positions)
    del hf_model  # the decoder holds its own copy of the weights: one copy, not two
    tell("exporting and validating", 0, 1)
    manifest = export_decoder(model, out_dir, opset=opset or DEFAULT_OPSET, atol=atol, **form)
    return HfDecoderExport(manifest, family, Path(out_dir))


def decoder_exits(exit_after: Sequence[int] | None, layers: int) -> list[int]:
    """The layer counts after which an exit reads: ``exit_after`` and the last layer, or
    by default every quarter of the layers. Not every layer, as for an encoder: each exit
    is a segment boundary, one more graph call for every token decoded in full."""
    if exit_after is None:
        return sorted({max(1, round(layers * q / 4)) for q in (1, 2, 3, 4)})
    return exit_cuts(exit_after, layers)
