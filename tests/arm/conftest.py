"""Fixtures for the emulated aarch64 run: where the host-side artifacts are, and a closing
line that says which machine the tests ran on (scripts/test-arm.sh prints it)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--host-artifacts",
        required=True,
        type=Path,
        help="directory written by scripts/arm_host_side.py on the host",
    )


@pytest.fixture(scope="session")
def host_artifacts(request: pytest.FixtureRequest) -> Path:
    return request.config.getoption("--host-artifacts")


def pytest_terminal_summary(terminalreporter) -> None:
    emulator = os.environ.get("EDGEEXIT_EMULATED", "none")
    versions = ", ".join(f"{d} {md.version(d)}" for d in ("onnxruntime", "numpy", "typer", "rich"))
    terminalreporter.write_line(
        f"platform.machine(): {platform.machine()}  (python {platform.python_version()}, "
        f"emulator: {emulator}, QEMU_CPU={os.environ.get('QEMU_CPU', '-')}; {versions})"
    )
