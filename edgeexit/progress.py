"""How a long library call says how far it has got: one callback shape for all of them.

``progress(stage, done, total)`` is called as work advances: ``stage`` names what runs
("training", "validating segment 2"), ``done`` of ``total`` steps are finished (``total``
0: a step whose length is not known). The CLI turns these calls into a bar or timed lines
(``edgeexit.cli.progress``); a library caller passes its own or none.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def silent(stage: str, done: int, total: int) -> None:
    """The progress callback of a caller that asked for none."""


def or_silent(progress: Progress | None) -> Progress:
    return silent if progress is None else progress
