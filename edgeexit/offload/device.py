"""``SplitRuntime``: a split bundle's device side (docs/serving.md).

The device runs segments 0..at with per-sample exits, as the unsplit bundle would; a
sample still not confident at exit ``at`` sends its carry to the server, which runs the
rest and answers with the exit it took there. When the server gives no usable answer
within the link's deadline (down, stalled, refusing, the link dropping packets), the
sample is answered from exit ``at``, the deepest the device holds, and marked degraded:
never blocked forever, never silently another model's answer.
"""

from __future__ import annotations

import math
import os
import threading
from time import perf_counter
from typing import Any

import numpy as np

from edgeexit.bundle import read_manifest, round_threshold
from edgeexit.energy import EnergyMeter, NoMeter, get_meter
from edgeexit.offload.link import Link, LinkError
from edgeexit.offload.wire import Expected, WireError, decode, encode
from edgeexit.runtime import Runtime
from edgeexit.runtime.inputs import Inputs, all_finite, check_inputs
from edgeexit.runtime.result import Result, TensorResult
from edgeexit.split import Split, read_split, wire_encoding
from edgeexit.targets import Target

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class SplitResult(Result):
    """A ``Result`` of a split bundle. ``exit_index`` counts every exit (the server's
    included); ``offloaded`` [batch]: the samples sent to the server; ``degraded``
    [batch]: those the server did not answer, answered from the device's last exit
    instead (``reason`` says why); ``local_ms`` the device's compute, ``link_ms`` the
    wait for the server; ``energy_mj`` is the device's compute only (the radio is not in
    it). ``segment_ms`` holds NaN: a split call times its two parts, not each segment."""

    __slots__ = ("offloaded", "degraded", "reason", "local_ms", "link_ms", "attempts")

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "offloaded": int(self.offloaded.sum()),
            "degraded": self.degraded.tolist(),
            "degraded_reason": self.reason,
            "local_ms": self.local_ms,
            "link_ms": self.link_ms,
        }

    def _summary(self):
        *lines, _segments = super()._summary()  # a split call does not time each segment
        yield from lines
        sent = int(self.offloaded.sum())
        yield (f"server       {sent} of {len(self.offloaded)} samples sent; "
               f"{self.link_ms:.1f} ms waiting, {self.local_ms:.1f} ms on the device")  # fmt: skip
        degraded = int(self.degraded.sum())
        if degraded:
            yield (f"[yellow]degraded[/yellow]     {degraded} answered from the device's "
                   f"last exit instead: {self.reason}")  # fmt: skip


class SplitTensorResult(SplitResult, TensorResult):
    __slots__ = ()


class SplitRuntime:
    """A split bundle's device side: ``run`` as ``Runtime.run``, the hard samples finished
    by ``server`` (a URL; None: every answer from the device, marked degraded), or by
    ``link``, one ready to post to (``offload.tail.InProcessLink``: no network).

    ``timeout_s``: the longest a call waits for the server (then it answers from the
    device); ``attempts``: tries within it. Thread-safe; the local part of each call runs
    alone, the wait for the server does not hold the device.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        *,
        server: str | None,
        timeout_s: float = 1.0,
        attempts: int = 3,
        target: str | os.PathLike | Target | None = None,
        threads: int | None = None,
        meter: EnergyMeter | None = None,
        split: Split | None = None,
        link: Any = None,
    ) -> None:
        manifest = read_manifest(bundle_dir)
        self.split: Split = read_split(manifest) if split is None else split
        if server is not None:
            link = Link(server, timeout_s=timeout_s, attempts=attempts)
        self.link = link
        at = self.split.at
        self.local = Runtime(bundle_dir, target=target, threads=threads, max_exit=at,
                             bodies=False, meter=NoMeter())  # fmt: skip
        self.meter = get_meter(self.local.target) if meter is None else meter
        self.manifest = manifest
        self.num_exits = manifest.num_exits
        self._thresholds = manifest.thresholds[: at + 1]
        row = self.local.output_shape
        self._answer = (
            Expected("logits", np.dtype(np.float32), tuple(row), ("raw",)),
            Expected("exit_index", np.dtype(np.int64), (), ("raw",)),
        )
        self._result = SplitResult if manifest.output == "logits" else SplitTensorResult
        self._no_segment_ms = (math.nan,) * self.num_exits
        self._lock = threading.Lock()

    @property
    def target(self) -> Target:
        return self.local.target

    @property
    def num_classes(self) -> int:
        return self.local.num_classes

    @property
    def targets_shape(self) -> tuple[int, ...] | None:
        return self.local.targets_shape

    def run(self, inputs: Inputs) -> SplitResult:
        """Run a batch: each sample leaves at its first confident exit on the device, or
        goes on to the server (InputError for inputs the bundle does not take)."""
        t0 = perf_counter()
        window = self.meter if self.meter.needs_window else None
        with self._lock:
            if window is not None:
                window.begin_window()
            logits, exit_index, alive, carry = self._local(inputs)
            local_s = perf_counter() - t0
            reading = window.end_window() if window is not None else None
        n = len(exit_index)
        offloaded = np.zeros(n, dtype=bool)
        offloaded[alive] = True
        degraded = np.zeros(n, dtype=bool)
        reason, attempts, t1 = None, 0, perf_counter()
        if alive.size:
            try:
                answer_logits, answer_exits, attempts = self._finish(carry)
            except (LinkError, WireError) as err:
                degraded[alive], reason = True, str(err)
            else:
                logits[alive] = answer_logits
                exit_index[alive] = answer_exits
        link_s = perf_counter() - t1
        if reading is not None:
            energy, source = reading.energy_mj, reading.source
        else:
            energy, source = self.meter.energy_mj_for(local_s), self.meter.provenance
        result = self._result.done(
            logits,
            exit_index,
            source,
            (perf_counter() - t0) * 1e3,
            energy,
            None,
            self._no_segment_ms,
        )
        result.offloaded, result.degraded, result.reason = offloaded, degraded, reason
        result.local_ms, result.link_ms, result.attempts = local_s * 1e3, link_s * 1e3, attempts
        return result

    def _local(self, inputs: Inputs):
        xs = check_inputs(inputs, self.local.manifest.inputs)  # NaN and inf refused too
        n = len(xs[0])
        alive = np.arange(n)
        exit_index = np.empty(n, dtype=np.int64)
        logits = None
        feeds: Any = xs
        at = self.split.at
        for i in range(at + 1):
            carry, step_logits, score = self.local.run_segment(i, feeds)
            if logits is None:
                logits = np.empty((n, *step_logits.shape[1:]), dtype=np.float32)
            # as the runtime decides: the threshold rounded to the score's dtype
            leaving = score >= round_threshold(self._thresholds[i], score.dtype)
            if i == at:  # every sample still here gets exit at's answer, kept if offloading fails
                logits[alive], exit_index[alive] = step_logits, at
            else:
                logits[alive[leaving]], exit_index[alive[leaving]] = step_logits[leaving], i
            keep = np.flatnonzero(~leaving)
            alive = alive[keep]
            if not keep.size:
                return logits, exit_index, alive, ()
            # copies: the runtime's buffers are overwritten by its next call
            feeds = [c[keep] for c in carry] if keep.size < len(leaving) or i == at else carry
        return logits, exit_index, alive, feeds

    def _finish(self, carry: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        if self.link is None:
            raise LinkError("no server given: answered on the device")
        body, attempts = self.link.post(self._request(carry))
        return (*self._read_answer(body, len(carry[0])), attempts)

    def _request(self, carry: list[np.ndarray]) -> bytes:
        tensors = []
        for spec, x in zip(self.split.carry, carry):
            encoding = wire_encoding(spec.dtype, self.split.encoding)
            if encoding == "float16" and np.abs(x).max(initial=0) > _FLOAT16_MAX:
                encoding = "float32"  # float16 cannot hold it: exact, at twice the bytes
            if spec.dtype == "float32" and not all_finite(x):
                raise LinkError(f"carry {spec.name!r} holds NaN or inf: not sent")
            tensors.append((spec.name, x, encoding))
        return encode(self.split.split_id, tensors)

    def _read_answer(self, body: bytes, rows: int) -> tuple[np.ndarray, np.ndarray]:
        logits, exits = decode(body, self.split.split_id, self._answer, max_rows=rows)
        if len(exits) != rows or not ((exits > self.split.at) & (exits < self.num_exits)).all():
            raise WireError(
                f"server answered {len(exits)} rows with exits outside "
                f"{self.split.at + 1}..{self.num_exits - 1}; expected one per sample sent"
            )
        return logits, exits
