"""``Runtime``: load a bundle for a device target and run it with per-sample early exit.

The public face of the device side. Loading reads and verifies the bundle (sha256 of every
segment), opens one ONNX Runtime session per segment configured from the target, and probes
the output shapes once; calls then go through the pre-bound chain (``chain.py``).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from time import perf_counter

import numpy as np
import onnxruntime as ort

from edgeexit.bundle import (
    Manifest,
    SegmentSpec,
    load_graphs,
    read_manifest,
    round_threshold,
)
from edgeexit.criteria import CRITERIA
from edgeexit.energy import EnergyMeter, get_meter
from edgeexit.errors import BundleError, InputError
from edgeexit.runtime.chain import Chain, all_infinite
from edgeexit.runtime.inputs import Inputs, all_finite, check_inputs, refuse_nonfinite
from edgeexit.runtime.result import ExitOutputs, Result, TensorResult, TokenResult
from edgeexit.runtime.session import open_session, resolve_config
from edgeexit.runtime.shapes import check_output_names, probe_layouts
from edgeexit.runtime.tokens import TokenRunner
from edgeexit.split import Split, tail_manifest
from edgeexit.targets import Target, load_target

KNOWN_THRESHOLDS = 64  # threshold settings remembered converted, per Runtime


class Runtime:
    """A bundle loaded for a device, ready to run with per-sample early exit.

    Args:
        bundle_dir: the bundle directory (``manifest.json`` + segment files).
        target: a target name (``edgeexit targets``), the path of a .toml profile, a
            ``Target``, or None for the host default. It sets providers, threads,
            spinning, graph optimization and the energy meter.
        providers: ONNX Runtime execution providers, overriding the target's; with
            ``['CUDAExecutionProvider', ...]`` carries stay on the GPU between segments.
        threads: intra-op threads, overriding the target's (0 = all cores).
        max_exit: cap the depth: every sample leaves by this exit, and the segments after
            it are neither verified nor loaded (DeeR-VLA's peak budget). ``num_exits`` and
            the thresholds ``run`` takes count the exits up to it. Default: the cap
            calibrate recorded in the manifest, if any.
        bodies: run a disabled exit's segment as its body (without the head) where the
            bundle has one; False runs every head (what calibration times, so that the
            head of each exit it may disable is known; docs/runtime.md).
        thresholds: load as if the manifest held these (one per exit up to the cap; inf:
            never), the chain planned for them; e.g. every one inf for the full model as
            deployed (one graph where the bundle has its plain graph), as profile and
            bench time it.
        meter: the energy meter the results' energy comes from, instead of the target's
            (``get_meter``, which probes the sensors and warns once when none answers):
            e.g. ``NoMeter()`` where the caller's energy figures come from elsewhere.
        tail: the split (``edgeexit.split.read_split``) whose server side to open
            (docs/serving.md): the segments after it, whose inputs are the carry of the
            split exit; exit indices count from the first of them (the bundle's exit
            ``at + 1`` is its 0).

    Raises BundleError (unreadable/other-format manifest, missing or modified segment,
    a segment ONNX Runtime cannot load) and TargetError (unknown target or provider).

    Attributes: ``manifest``, ``target``, ``num_exits``, ``bundle_dir``.

    Thread-safe: calls from several threads are serialized by a lock (each call owns the
    pre-allocated buffers while it runs), so every thread gets its own right answer; for
    calls in parallel, give each thread its own Runtime. ``run_segment`` returns views of
    those buffers: copy them before another call, from any thread, can overwrite them.

    Example::

        rt = Runtime("bundle/", target="rpi5")
        result = rt.run(x)            # x: float32 [batch, 1, 8, 8]
        result.exit_index, result.latency_ms, result.energy_mj, result.energy_source
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        *,
        target: str | os.PathLike | Target | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        max_exit: int | None = None,
        bodies: bool = True,
        thresholds: Sequence[float] | None = None,
        meter: EnergyMeter | None = None,
        tail: Split | None = None,
    ) -> None:
        self.target = load_target(target)
        config = resolve_config(self.target, providers, threads)
        self.manifest: Manifest = read_manifest(bundle_dir)
        if tail is not None:  # a split bundle's server side: the segments after the split
            self.manifest = tail_manifest(self.manifest, tail)
        if max_exit is None:  # calibrate may have capped the bundle (calibrate --max-exit)
            max_exit = self.manifest.extra.get("max_exit")
        if max_exit is not None:  # the later segments are never opened: no memory for them
            self.manifest = self.manifest.capped(max_exit)
        if thresholds is not None:  # deployed as if the (capped) manifest held these
            self.manifest = self.manifest.with_thresholds(tuple(thresholds))
        # a criterion decided here (patience) updates its state from each exit's logits
        self._state_update = CRITERIA[self.manifest.criterion].runtime_state
        # Disabled exits are free: while exit i's threshold is "never", its body (the block
        # without the head) runs instead, and while every early exit is, the bundle's plain
        # graph (the bodies and the last segment as one graph: one call, not one per
        # segment). A call whose thresholds enable such an exit, and calibration's
        # every-exit pass, use the chain with every head (opened then).
        n = self.manifest.num_exits
        plain = _plain_graph(self.manifest, self._state_update) if bodies else None
        if plain is not None:
            self._headless = frozenset(range(n - 1))
            reopened = range(n)  # the chain with heads shares no session with the plain graph
            chain_manifest = replace(self.manifest, segments=(plain,),
                                     thresholds=self.manifest.thresholds[-1:])  # fmt: skip
        else:
            self._headless = (
                _disabled_with_body(self.manifest, self._state_update) if bodies else frozenset()
            )
            reopened = sorted(self._headless)
            segments = tuple(
                s.headless if i in self._headless else s
                for i, s in enumerate(self.manifest.segments)
            )
            chain_manifest = replace(self.manifest, segments=segments)
            # Every exit before k disabled: k's prefix graph (those bodies and segment k
            # as one graph) starts the chain, one ONNX Runtime call where they took k + 1.
            k = _prefix_exit(self.manifest, self._headless)
            if k:
                first = self.manifest.segments[k].as_prefix(chain_manifest.segments[0].inputs)
                chain_manifest = replace(self.manifest, segments=(first, *segments[k + 1 :]),
                                         thresholds=self.manifest.thresholds[k:])  # fmt: skip
                reopened = sorted({*self._headless, k})  # segment k runs inside the prefix
        self._reopened = frozenset(reopened)
        self._head_specs = [self.manifest.segments[i] for i in reopened]
        # Every file the (capped) manifest lists is checked at load, in one pass (a weights
        # file several graphs share is hashed once), whatever the thresholds run: the
        # chain's graphs, then the segments with heads that bodies or a joined graph stand
        # in for (their bytes are not kept: a disabled head holds no memory; read and
        # checked again when opened), then the rest (bodies inside the plain graph, joined
        # graphs these thresholds do not run). A changed or missing file fails the load.
        chain_specs = chain_manifest.segments
        listed = {s.file for s in (*chain_specs, *self._head_specs)}
        others = [g for s in self.manifest.segments for g in s.other_graphs if g.file not in listed]
        sources = load_graphs(bundle_dir, [*chain_specs, *self._head_specs, *others])
        for spec, source in zip(self._head_specs, sources[len(chain_specs) :]):
            check_output_names(spec, source)
        sessions = [open_session(s, config) for s in sources[: len(chain_specs)]]
        del sources
        layouts = probe_layouts(chain_manifest, sessions)
        # Exit decisions compare in each score's own dtype: thresholds are rounded to it
        # once, here and in _convert_thresholds (bundle.round_threshold says why). A body
        # (nor a plain graph) has no score: every score edgeexit exports is float32.
        dtypes = [lay[seg.score].dtype if seg.score else np.dtype(np.float32)
                  for lay, seg in zip(layouts, chain_manifest.segments)]  # fmt: skip
        self._score_dtypes = (np.dtype(np.float32),) * (n - len(dtypes)) + tuple(dtypes)
        self._carry_device = "cuda" if config.device == "cuda" else None
        self._chain = Chain(
            chain_manifest, sessions, layouts, self._carry_device, first_exit=n - len(sessions)
        )
        self._heads_chain: Chain | None = None if self._reopened else self._chain
        # A call that runs a joined graph (plain or prefix) times one graph, not each
        # segment: the segments inside it but the last get NaN (Result.segment_ms).
        self._stamps_before = [math.nan] * (n - len(sessions))
        self.bundle_dir, self.config = Path(bundle_dir), config
        meter = get_meter(self.target) if meter is None else meter
        # A sensor gets a real window around each call; a power model (or no meter) has
        # nothing to read, so its energy is computed from the call's measured latency.
        self._meter = meter
        self._window = meter if meter.needs_window else None
        self._power_w = meter.modeled_power_w
        self._energy = meter.provenance
        self._to_last = all_infinite(self.manifest.thresholds)
        # Thresholds passed to run(), converted and rounded (~6 us): a benchmark or a search
        # cycling over a few settings converts each once.
        self._known_thresholds: dict[tuple, tuple[tuple[float, ...], bool, bool]] = {}
        self._thresholds = self._rounded(self.manifest.thresholds)
        # the loaded chain's own: from its first exit on (a joined graph stands for those before)
        self._chain_thresholds = self._thresholds[self._chain.first_exit :]
        self._lock = threading.Lock()
        # a bundle whose exits give tensors answers with outputs, not predictions
        self._result = {"logits": Result, "tensor": TensorResult,
                        "tokens": TokenResult}[self.manifest.output]  # fmt: skip
        # per-token exits: samples run one at a time, the token axis compacted
        self._tokens = (
            TokenRunner(self.manifest, self._chain.sessions)
            if self.manifest.output == "tokens"
            else None
        )
        # The cached plan of run()'s shortest path for some inputs, or None: the chain's,
        # where the manifest's thresholds let no sample leave before the last exit and no
        # sensor window needs opening; else never one.
        hot = self._tokens is None and self._window is None and self._to_last
        self._hot_plan = self._chain.known_plan if hot else _no_plan

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    @property
    def bodies_in_use(self) -> frozenset[int]:
        """Exits whose segment runs as its body (the block without its head) while the
        manifest's thresholds hold: those whose threshold is "never"."""
        return self._headless

    @property
    def runs_plain_graph(self) -> bool:
        """True while the manifest's thresholds hold and the bundle's plain graph runs (every
        early exit disabled): one ONNX Runtime call per batch, the plain network's cost."""
        return 0 < self._chain.first_exit == self.num_exits - 1

    @property
    def prefix_exit(self) -> int | None:
        """The exit whose prefix graph starts the chain while the manifest's thresholds hold
        (every exit before it disabled: their bodies and its segment run as one graph), or
        None. (A prefix stands for an exit before the last; the plain graph for the last.)"""
        first = self._chain.first_exit
        return first if 0 < first < self.num_exits - 1 else None

    @property
    def num_classes(self) -> int:
        """Classes every exit's logits hold (probed at load). A bundle whose exits give
        tensors has none: BundleError naming ``output_shape``."""
        if self.manifest.output == "tensor":
            raise BundleError(
                f"{self.bundle_dir}'s exits give tensors of shape {self.output_shape}, not "
                "class logits: it has no classes (use `output_shape`)"
            )
        return self._chain.output_layout.row_shape[-1]  # per-token logits: classes last

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of each sample's output, batch apart (``(classes,)`` for logits)."""
        return self._chain.output_layout.row_shape

    @property
    def targets_shape(self) -> tuple[int, ...] | None:
        """The shape of each sample's 'y' in a data file (``load_data(targets=)``): None
        for one class label per sample, one label per token for per-token exits, or the
        output's own shape for exits that give tensors (the target image...)."""
        output = self.manifest.output
        if output == "logits":
            return None
        return self.output_shape[:-1] if output == "tokens" else self.output_shape

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        """The ONNX Runtime sessions the chain runs, in order: one per segment, the plain
        graph's alone (``runs_plain_graph``), or a prefix graph's standing for the segments
        up to ``prefix_exit``, then one per segment."""
        return self._chain.sessions

    def run(self, inputs: Inputs, *, thresholds: Sequence[float] | None = None) -> Result:
        """Run a batch; each sample leaves at its first exit i with score >= thresholds[i].

        ``inputs``: one array (single-input models), a sequence of arrays in the
        manifest's input order, or a dict from input name to array; checked against the
        manifest first (InputError naming the input, expected and received).
        ``thresholds``: one per exit, overriding the manifest's for this call; ``inf``
        means no sample leaves there. The last exit always takes every remaining sample.
        Each sample's result is exactly what it gets when run alone. Inputs holding NaN or
        inf are refused (InputError naming the rows): they would get a prediction.
        """
        with self._lock:
            return self._run(inputs, thresholds)

    def _run_tokens(self, inputs: Inputs, thresholds: Sequence[float] | None, t0: float) -> Result:
        chosen = self._thresholds if thresholds is None else self._checked(thresholds)[0]
        xs = check_inputs(inputs, self.manifest.inputs)
        window = self._window
        if window is not None:
            window.begin_window()
        logits, exit_index, segment_ms = self._tokens.run(xs, chosen)
        return self._done(logits, exit_index, (perf_counter() - t0) * 1e3, segment_ms)

    def _run(self, inputs: Inputs, thresholds: Sequence[float] | None) -> Result:
        t0 = perf_counter()
        # The deployed path: the manifest's thresholds, every sample to the last exit,
        # inputs like an earlier call's. Every Python step costs microseconds on a cold
        # call (docs/runtime.md), so it is these lines until the segments run, and the
        # Result is made before them.
        plan = self._hot_plan(inputs) if thresholds is None else None
        if plan is not None:
            xs = (inputs,) if type(inputs) is np.ndarray else inputs
            if plan.input_sum is None:  # else run_plan reads the graph's sum of them
                for k in plan.float_inputs:  # inline: a call costs a cold microsecond
                    if not all_finite(xs[k]):
                        refuse_nonfinite(xs, self.manifest.inputs)
            stamps = self._stamps_before[:]
            result = self._result(None, plan.exit_index, self._energy, None, None,
                                  self._power_w, None, stamps, t0)  # fmt: skip
            result.logits = self._chain.run_plan(plan, xs, stamps)
            return result
        if self._tokens is not None:
            return self._run_tokens(inputs, thresholds, t0)
        if thresholds is None:
            chosen, to_last, chain = self._chain_thresholds, self._to_last, self._chain
        else:
            chosen, to_last, heads = self._checked(thresholds)
            chain = self._with_heads() if heads else self._chain
            chosen = chosen[chain.first_exit :]  # a joined graph stands for the exits before
        # Inputs exactly like an earlier call's have a plan cached and need no other check.
        # After a large segment every Python step costs microseconds (docs/runtime.md), so
        # everything a call needs is settled here, before the segments run.
        plan = chain.known_plan(inputs)
        if plan is None:
            xs = check_inputs(inputs, self.manifest.inputs)
        else:
            xs = (inputs,) if type(inputs) is np.ndarray else inputs
            if plan.input_sum is None:  # else forward and run_plan read the graph's sum
                for k in plan.float_inputs:
                    if not all_finite(xs[k]):
                        refuse_nonfinite(xs, self.manifest.inputs)
        window = self._window
        if window is not None:
            window.begin_window()
        stamps = segment_ms = None
        if to_last:  # no exit before the last can fire: the segments run back to back
            logits, exit_index, stamps = chain.forward_to_last(xs, plan)
            stamps[:0] = self._stamps_before
        else:
            logits, exit_index, segment_ms = chain.forward(xs, chosen, self._state_update, plan)
            if chain.first_exit:
                segment_ms[:0] = self._stamps_before
        return self._done(logits, exit_index, (perf_counter() - t0) * 1e3, segment_ms, stamps)

    def _done(
        self,
        logits: np.ndarray,
        exit_index: np.ndarray,
        latency_ms: float,
        segment_ms: Sequence[float] | None,
        stamps: list[float] | None = None,
    ) -> Result:
        """A finished call's result: energy read from the sensor's window opened for the
        call, or (no window) modeled from the latency on first access, or none."""
        window = self._window
        if window is None:
            return self._result.done(
                logits, exit_index, self._energy, latency_ms, None, self._power_w,
                segment_ms, stamps,
            )  # fmt: skip
        reading = window.end_window()
        return self._result.done(
            logits, exit_index, reading.source, latency_ms, reading.energy_mj, None,
            segment_ms, stamps,
        )  # fmt: skip

    def run_all_exits(
        self,
        inputs: Inputs,
        *,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> ExitOutputs:
        """Every sample through every exit, for calibration.

        Returns ExitOutputs: ``logits`` float32 [num_exits, N, C], ``scores`` float32
        [num_exits, N] (patience counters for the ``patience`` criterion) and
        ``segment_ms``, each segment's mean time per sample over the pass.
        ``progress(done, total)`` is called after each batch of ``batch_size`` samples.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        xs = check_inputs(inputs, self.manifest.inputs)
        with self._lock:
            return self._run_all_exits(xs, batch_size, progress)

    def _run_all_exits(
        self,
        xs: tuple[np.ndarray, ...],
        batch_size: int,
        progress: Callable[[int, int], None] | None,
    ) -> ExitOutputs:
        n = len(xs[0])
        logits = np.empty((self.num_exits, n, *self.output_shape), dtype=np.float32)
        chain = self._with_heads()  # (a plain graph has no score)
        score_row = chain.layouts[-1][self.manifest.segments[-1].score].row_shape
        scores = np.empty((self.num_exits, n, *score_row), dtype=np.float32)  # per token too
        total_s = np.zeros(self.num_exits)
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            total_s += chain.forward_all(
                tuple(x[rows] for x in xs), self._state_update, logits[:, rows], scores[:, rows]
            )
            if progress is not None:
                progress(rows.stop, n)
        return ExitOutputs(logits, scores, tuple(float(s) * 1e3 / n for s in total_s))

    def run_segment(
        self, i: int, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Run segment i alone on its ONNX inputs; return (carry, logits, score).

        ``feeds``: a dict from the segment's input names, or arrays in its input order
        (segment 0 takes the model inputs, segment i the carry of segment i-1). The
        returned arrays are views of the runtime's buffers, overwritten by the next
        call: copy them to keep them. Feeding segment i+1 the carry just returned costs
        no copy. ``score`` is the segment's own score output (not the patience counter).
        On the CUDA provider the carry is returned as host copies.
        """
        if not isinstance(i, int) or not 0 <= i < self.num_exits:
            raise InputError(
                f"segment index {i!r} is out of range; expected 0..{self.num_exits - 1}"
            )
        with self._lock:
            chain = self._with_heads()
            step = chain.segment_step(i, feeds)
            chain.run_step(i, step)
            carry = [chain.to_host(rows) for rows in step.carry]
            return carry, step.logits, step.score

    def _with_heads(self) -> Chain:
        """The chain with every exit's head: the loaded one when no exit runs as a body,
        else one whose segments with heads are opened now, once (the others shared)."""
        if self._heads_chain is None:
            sources = load_graphs(self.bundle_dir, self._head_specs)  # in exit order
            opened = iter([open_session(source, self.config) for source in sources])
            first = self._chain.first_exit  # the loaded chain's session j is exit first + j
            sessions = [
                next(opened) if i in self._reopened else self._chain.sessions[i - first]
                for i in range(self.num_exits)
            ]
            layouts = probe_layouts(self.manifest, sessions)
            self._heads_chain = Chain(self.manifest, sessions, layouts, self._carry_device)
        return self._heads_chain

    def _checked(self, thresholds: Sequence[float]) -> tuple[tuple[float, ...], bool, bool]:
        """The thresholds as floats, whether only the last exit can fire, and whether an
        exit that runs as a body (no head) is enabled, so that the heads are needed.

        Callers pass a few settings over and over (a benchmark cycles over several): an
        equal sequence reuses its answer (~0.3 µs) instead of converting, checking and
        rounding again (~6 µs). A NaN is never stored (its conversion is refused).
        """
        try:
            raw = tuple(thresholds)
        except TypeError as err:
            raise InputError(f"thresholds must be numbers, one per exit: {err}") from err
        try:
            return self._known_thresholds[raw]
        except KeyError:
            pass
        except TypeError:  # unhashable (e.g. an array among them): convert, do not keep
            return self._convert_thresholds(raw)
        answer = self._convert_thresholds(raw)
        if len(self._known_thresholds) >= KNOWN_THRESHOLDS:
            self._known_thresholds.clear()  # a sweep over many settings: start over
        self._known_thresholds[raw] = answer
        return answer

    def _convert_thresholds(self, raw: tuple) -> tuple[tuple[float, ...], bool, bool]:
        try:
            values = tuple(float(t) for t in raw)
        except (TypeError, ValueError) as err:
            raise InputError(f"thresholds must be numbers, one per exit: {err}") from err
        if len(values) != self.num_exits:
            raise InputError(
                f"got {len(values)} thresholds; expected {self.num_exits}, one per exit"
            )
        if any(math.isnan(t) for t in values):
            raise InputError("a threshold is NaN; expected a number or inf (nobody exits there)")
        values = self._rounded(values)
        heads = any(values[i] != math.inf for i in self._headless)
        return values, all_infinite(values), heads

    def _rounded(self, thresholds: Sequence[float]) -> tuple[float, ...]:
        return tuple(round_threshold(t, d) for t, d in zip(thresholds, self._score_dtypes))


def _no_plan(inputs: object) -> None:
    return None


def _plain_graph(manifest: Manifest, state_update: Callable | None) -> SegmentSpec | None:
    """The last segment's plain graph as a one-segment chain, when every exit before the
    last is "never" (and no criterion reads every head); else None."""
    last = manifest.segments[-1]
    if state_update is not None or not all_infinite(manifest.thresholds):
        return None
    return last.as_plain(tuple(i.name for i in manifest.inputs))


def _prefix_exit(manifest: Manifest, headless: frozenset[int]) -> int:
    """The first exit that does not run as a body, when it is neither the first nor the
    last and has a prefix graph (every exit before it then runs as a body), else 0."""
    k = next(i for i in range(manifest.num_exits) if i not in headless)
    if 0 < k < manifest.num_exits - 1 and manifest.segments[k].prefix is not None:
        return k
    return 0


def _disabled_with_body(manifest: Manifest, state_update: Callable | None) -> frozenset[int]:
    """Exits before the last whose threshold is "never" and whose segment has a body; none
    under a criterion the runtime follows exit by exit (patience reads every head)."""
    if state_update is not None:
        return frozenset()
    last = manifest.num_exits - 1
    return frozenset(
        i
        for i, (s, t) in enumerate(zip(manifest.segments, manifest.thresholds))
        if i < last and t == math.inf and s.body is not None
    )
