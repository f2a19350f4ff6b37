"""Example multi-exit models, the bundled digits data, and a synthetic token task, for the
demo, the tests and the benchmarks. Nothing here downloads anything.

The data helpers need only numpy (and scikit-learn for the digits); the models need torch
and are imported on first use, like the rest of the export side.
"""

from __future__ import annotations

from edgeexit.lazy import lazy_getattr

_LAZY = {
    "Split": "edgeexit.examples.digits",
    "DigitsSplits": "edgeexit.examples.digits",
    "load_digits": "edgeexit.examples.digits",
    "load_noisy_digits": "edgeexit.examples.digits",
    "add_noise": "edgeexit.examples.digits",
    "noisy_copies": "edgeexit.examples.digits",
    "make_token_task": "edgeexit.examples.digits",
    "digits_resnet": "edgeexit.examples.models",
    "digits_cnn": "edgeexit.examples.models",
    "digits_two_scale": "edgeexit.examples.models",
    "digits_gated": "edgeexit.examples.models",
    "digits_three_exit": "edgeexit.examples.models",
    "tiny_bert": "edgeexit.examples.models",
    "EXAMPLE_MODELS": "edgeexit.examples.models",
    "train_multi_exit": "edgeexit.export.train",
    "exit_accuracies": "edgeexit.export.train",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
