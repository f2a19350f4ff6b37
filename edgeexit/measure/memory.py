"""Resident memory a segment costs on the device: the process's RSS growth when its ONNX
Runtime session is opened (weights, prepacked copies, the initial arena), the figure a
memory budget is planned with (``calibrate --target-memory``). Linux reports RSS in
/proc; elsewhere the figure is None, never a guess."""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from pathlib import Path

from edgeexit.bundle import Manifest, SegmentSource, load_segments
from edgeexit.runtime.session import SessionConfig, open_session

STATUS = Path("/proc/self/status")
MEMINFO = Path("/proc/meminfo")


def resident_mb() -> float | None:
    """This process's resident memory now, MB; None where the OS does not say."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_mb() -> float | None:
    """Memory the system can give a new allocation without swapping, MB (Linux's
    MemAvailable; elsewhere the physical memory, an upper bound); None where unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (AttributeError, OSError, ValueError):
        return None


def segment_resident_mb(
    bundle_dir: str | os.PathLike, manifest: Manifest, config: SessionConfig
) -> list[float | None]:
    """Each segment's RSS growth when its session is opened after the ones before it (all
    kept open while measuring, as a runtime keeps them), MB."""
    return graphs_resident_mb(load_segments(bundle_dir, manifest), config)


def graphs_resident_mb(
    sources: Sequence[SegmentSource], config: SessionConfig
) -> list[float | None]:
    """``segment_resident_mb`` for any verified graphs (a decoder's segments and head)."""
    gc.collect()
    sessions, growth = [], []
    for source in sources:
        before = resident_mb()
        sessions.append(open_session(source, config))
        after = resident_mb()
        growth.append(None if before is None or after is None else max(after - before, 0.0))
    del sessions
    gc.collect()
    return growth
