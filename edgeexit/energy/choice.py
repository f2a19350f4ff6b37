"""What the meter factory chose for a target, and why, in words: the one line a command
prints when its energy figures will not be measured (``notice``), the probe details behind
it (``details``: the CLI shows them under ``-v``, ``inspect`` always), and ``announce``,
which logs such a line once per process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from edgeexit.energy.provenance import MODELED, EnergySource, modeled_from

log = logging.getLogger("edgeexit.energy")


@dataclass(frozen=True)
class MeterChoice:
    """The meter ``get_meter`` gives a target: what its figures are, the power model a
    modeled figure comes from, and each sensor that was tried and could not be read."""

    target: str | None  # the target's name (None: no target given)
    source: EnergySource  # measured by a sensor, modeled, or none
    power_w: float | None = None  # the active power modeled figures use, W
    unavailable: tuple[tuple[str, str], ...] = ()  # (sensor, why not), in probe order

    @property
    def notice(self) -> str | None:
        """One line when a sensor was looked for and none could be read, else None (a
        sensor measures, or the target says it has none: nothing was missed)."""
        if not self.unavailable or self.source.measured:
            return None
        return f"energy: {self._instead()}; no sensor found"

    @property
    def details(self) -> str:
        """Why each sensor tried could not be read, in probe order."""
        return "; ".join(f"{sensor}: {why}" for sensor, why in self.unavailable)

    def describe(self) -> str:
        """'measured (rapl)', or what the figures are instead and, when a sensor was looked
        for, why none was used: for reports that show this machine's energy source."""
        if self.source.measured:
            return self.source.label
        if not self.unavailable:
            return self._instead()
        return f"{self._instead()}; no sensor found ({self.details})"

    def _instead(self) -> str:
        whose = self.target or "the host"
        if self.source == MODELED and self.power_w is not None:
            return modeled_from(whose, self.power_w)
        return f"not reported ({whose} has no power model)"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "source": self.source.label,
            "power_w": self.power_w,
            "unavailable": dict(self.unavailable),
        }


def announce(notice: str | None, details: str = "") -> None:
    """Log ``notice`` as a warning, once per process whatever asks again (a command opens
    its meter several times). ``details`` travel with the record (``record.details``) for a
    handler that shows them on request, as the CLI's ``-v`` does."""
    if notice:
        _warn_once(notice, details)


@functools.cache
def _warn_once(notice: str, details: str) -> None:
    log.warning(notice, extra={"details": details})
