"""Device targets: profiles per device and per-target compilation of bundles."""

from edgeexit.targets.profile import Target, available_targets, load_target

__all__ = ["Target", "available_targets", "load_target"]
