"""Whether this process runs on an emulated device, where timings say nothing.

scripts/test-arm.sh runs the device path on an emulated Raspberry Pi (qemu-user) and sets
``EDGEEXIT_EMULATED`` to the emulator's name: from inside the guest, qemu-user looks like a
real aarch64 machine. Only messages change; what is measured and saved stays the same.
"""

from __future__ import annotations

import os

EMULATED_ENV = "EDGEEXIT_EMULATED"


def emulator() -> str | None:
    """The emulator's name (e.g. ``qemu-aarch64``), or None on real hardware."""
    return os.environ.get(EMULATED_ENV) or None


def emulation_warning() -> str | None:
    """One line saying that timings under emulation mean nothing, or None on real hardware."""
    name = emulator()
    if name is None:
        return None
    return (
        f"running under emulation ({name}): these timings mean nothing for the real device; "
        "they only show that profiling works. Profile on the device itself"
    )
