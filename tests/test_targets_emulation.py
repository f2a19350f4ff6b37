"""Emulation is reported only when the environment says so (scripts/test-arm.sh sets it)."""

from edgeexit.targets.emulation import EMULATED_ENV, emulation_warning, emulator


def test_real_hardware_has_no_emulator_and_no_warning(monkeypatch):
    monkeypatch.delenv(EMULATED_ENV, raising=False)
    assert emulator() is None
    assert emulation_warning() is None


def test_an_emulator_is_named_in_the_warning(monkeypatch):
    monkeypatch.setenv(EMULATED_ENV, "qemu-aarch64")
    assert emulator() == "qemu-aarch64"
    assert "emulation (qemu-aarch64)" in emulation_warning()
    assert "mean nothing" in emulation_warning()
