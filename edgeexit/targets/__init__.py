"""Device targets: what a device is (its spec, shipped as TOML) and the checks on a spec.

A leaf: imports nothing of edgeexit but errors and files. Compiling a bundle for a target
lives in ``edgeexit.compile`` (host only); measuring one on it in ``edgeexit.measure``."""

from edgeexit.targets.spec import Target, available_targets, load_target

__all__ = ["Target", "available_targets", "load_target"]
