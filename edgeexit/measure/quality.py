"""The quality of outputs that are not class logits (an enhanced image, a vector), per
sample, against target tensors: what calibrate's quality budgets, compile's check of a
converted bundle and `edgeexit run` report for exits that give tensors. numpy only."""

from __future__ import annotations

import numpy as np

from edgeexit.errors import CalibrationError

MAX_PSNR_DB = 100.0  # an output equal to its target: a finite figure, so means stay finite
PEAK = 1.0  # PSNR's peak signal: images scaled to [0, 1]


def per_sample_quality(outputs: np.ndarray, targets: np.ndarray | None, metric: str) -> np.ndarray:
    """Quality [exits, samples] (higher is better) of ``outputs`` [exits, samples, ...]
    against ``targets`` [samples, ...], or against the last exit's outputs without them."""
    reference = outputs[-1] if targets is None else targets
    if metric == "psnr" and targets is None:
        raise CalibrationError(
            "a PSNR budget needs the target tensors 'y' (e.g. the clean images) in the "
            "data; without them give the budget as a rise in MSE against the last exit's "
            "output, e.g. `max_quality_drop` 0.001mse"
        )
    diff = outputs.astype(np.float64) - reference[None].astype(np.float64)
    mse = (diff**2).reshape(diff.shape[0], diff.shape[1], -1).mean(axis=2)
    if metric == "mse":
        return -mse
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(PEAK**2 / mse)
    return np.minimum(psnr, MAX_PSNR_DB)
