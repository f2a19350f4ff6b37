"""Calibration: per-exit thresholds that meet a latency, energy or accuracy budget.

The search (``search``, ``guarantee``) is pure numpy over the outputs of one pass of the
calibration data through every exit; ``pipeline`` does the I/O around it (run the bundle,
load the profile, write the manifest atomically); ``bench`` measures a bundle as deployed.
Nothing here imports torch or onnx, so ``edgeexit bench`` works on a device.
"""

from edgeexit.budget import Budget, parse_energy_mj, parse_latency_ms
from edgeexit.calibrate.costs import ExitCosts, load_profile_costs
from edgeexit.calibrate.guarantee import Certificate, certify
from edgeexit.calibrate.report import CalibrationReport
from edgeexit.calibrate.search import ExitTable, OperatingPoint, evaluate, search

__all__ = [
    "Budget",
    "CalibrationReport",
    "Certificate",
    "ExitTable",
    "OperatingPoint",
    "ExitCosts",
    "certify",
    "evaluate",
    "load_profile_costs",
    "parse_energy_mj",
    "parse_latency_ms",
    "search",
]
