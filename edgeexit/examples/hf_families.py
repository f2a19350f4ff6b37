"""Which Hugging Face families ``edgeexit export --hf DIR`` takes, read from the folder's
``config.json`` as data: no torch, no transformers, nothing from the folder run. The CLI
learns the family first, so that the flags that go with it (``--data`` for an encoder's
exit heads, none for a decoder's) are checked before anything slow is loaded.
"""

from __future__ import annotations

from pathlib import Path

from edgeexit.documents import read_json
from edgeexit.errors import CheckpointError

ENCODERS = ("bert", "roberta", "distilbert", "albert")
DECODERS = ("llama", "mistral", "qwen2")  # causal LMs: a decoder bundle, exits sharing the head
FAMILIES = (*ENCODERS, "vit", *DECODERS)
SUPPORTED = (
    "bert, roberta, distilbert or albert (encoders), vit, or llama, mistral or qwen2 (decoders)"
)
_CONFIG_BYTES = 1 << 20


def folder_family(folder: Path) -> str:
    """The folder's ``model_type`` (its config.json, read as data), if edgeexit adapts it."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise CheckpointError(
            f"Hugging Face folder {folder} {what}; expected a folder save_pretrained wrote "
            "(config.json and the weights)"
        )
    missing = "does not exist; expected the config.json save_pretrained writes"
    doc = read_json(folder / "config.json", "Hugging Face config", CheckpointError,
                    max_bytes=_CONFIG_BYTES, missing=missing)  # fmt: skip
    family = doc.get("model_type") if isinstance(doc, dict) else None
    if family not in FAMILIES:
        raise CheckpointError(
            f"{folder} holds a model of type {family!r}; edgeexit adapts {SUPPORTED}"
        )
    return family
