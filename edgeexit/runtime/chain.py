"""The segment chain: sessions, their pre-allocated buffers and IOBindings, and the loop.

Speed is the point of this module. Every segment writes into buffers allocated once (grown
only when a bigger batch comes) and bound once per batch size: segment i's carry buffers
*are* segment i+1's input buffers, so nothing is copied between segments unless samples
leave. When some do, the surviving rows are gathered to the front of the same buffers and
the next segment runs on a smaller batch. Per exit, only the ``[batch]`` score is looked at;
logits are read only for the samples that leave there. The caches of bindings are keyed by
batch size, so a steady stream of same-sized calls does no binding work at all.

With the CUDA provider the carry buffers are device OrtValues: carries never leave the GPU,
and only scores and logits are bound to host memory (see ``gather.py`` for the compaction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from math import isfinite
from time import perf_counter
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from edgeexit.bundle import INPUT_SUM, Manifest
from edgeexit.criteria import RuntimeState
from edgeexit.errors import BundleError, InputError, first_line
from edgeexit.runtime.buffers import Buffer, bound_runner
from edgeexit.runtime.gather import RowMover
from edgeexit.runtime.inputs import refuse_nonfinite
from edgeexit.runtime.session import ORT_ERRORS
from edgeexit.runtime.shapes import Layout, gives_input_sum

_ONE = np.ones(1, dtype=bool)
_INF = math.inf  # a module global: one lookup instead of two (math, then .inf) per exit
MAX_SHARED_COLUMN = 4096  # batch sizes whose all-at-one-exit index array is cached
_SEQUENCES = (tuple, list)  # input containers a cached plan takes


class Step(NamedTuple):
    """Segment i bound for a batch of k: call ``run()``, then read these views (score and
    logits are None for a body, a block run without its disabled head)."""

    run: Callable[[], object]  # runs the segment on its bound buffers
    binding: ort.IOBinding
    score: np.ndarray | None  # [k] view of the score buffer
    # Row 0 of the score buffer as a memoryview: first_score[0] is a Python float, read
    # and compared by the interpreter alone. Right after a 6 ms segment a numpy scalar
    # test costs ~15 µs here (numpy's code is out of the caches), this one ~9 µs.
    first_score: memoryview | np.ndarray
    logits: np.ndarray | None  # [k, C] view of the logits buffer
    carry: tuple  # [k, ...] views of the carry buffers (numpy on CPU, OrtValue rows on CUDA)
    # What the graph gives as INPUT_SUM (a plain graph sums its float inputs) as a
    # one-float memoryview, read after the call; None when it gives none
    input_sum: memoryview | None = None


class Plan(NamedTuple):
    """A batch bound to run every segment back to back (no exit before the last can fire).

    Keyed by the first input's full shape, so a cache hit also means that shape is known
    good. Holds views into the chain's buffers: made again whenever they grow.
    """

    stage: tuple[np.ndarray, ...]  # [n, ...] views of the input staging buffers
    runs: tuple[Callable[[], object], ...]  # each segment's bound call, in order
    steps: tuple[Step, ...]  # each segment bound for the whole batch, in order
    logits: np.ndarray  # [n, C] view of the last exit's logits buffer
    exit_index: np.ndarray  # the shared read-only [n] column of the last exit's index
    inputs: tuple[tuple[np.dtype, tuple[int, ...]], ...]  # every input's dtype and shape
    # the input's dtype when there is one input (an array of this shape and dtype is all
    # a call needs), else None
    single_dtype: np.dtype | None
    float_inputs: tuple[int, ...]  # which inputs are floats, checked for NaN and inf
    # the first graph's sum of the float inputs (Step.input_sum): when not None, run_plan
    # checks the inputs for NaN and inf after the call, by reading it
    input_sum: memoryview | None


class Chain:
    """The sessions of one bundle with their buffers; runs batches through them.

    Not thread-safe: one call at a time (the buffers are shared between calls); Runtime
    holds a lock around every call into it.
    """

    def __init__(
        self,
        manifest: Manifest,
        sessions: list[ort.InferenceSession],
        layouts: list[dict[str, Layout]],
        carry_device: str | None = None,
        first_exit: int = 0,
    ) -> None:
        self.manifest = manifest
        # the bundle's exit index of this chain's first segment: a plain graph standing for
        # every segment is one segment whose exit is the bundle's last
        self.first_exit = first_exit
        self.sessions = sessions
        self.layouts = layouts
        # None: carries are numpy arrays; else OrtValues on that device ("cuda"), which
        # never leave it (only scores and logits are bound to host memory).
        self.carry_device = carry_device
        self.mover = RowMover(sessions[0].get_providers(), carry_device) if carry_device else None
        # every exit's output (class logits, or any tensor): each sample gets one of these
        self.output_layout = layouts[-1][manifest.segments[-1].logits]
        # the first graph sums the float inputs (a plain graph): NaN and inf are refused by
        # reading that sum after the call (run_plan), checked here to be what it claims
        self.sums_inputs = gives_input_sum(manifest, sessions[0])
        self.input_layouts = [
            Layout(tuple(int(d) for d in s.shape[1:]), np.dtype(s.dtype)) for s in manifest.inputs
        ]
        # A RunOptions object passed in: with None, ORT builds a default one every call (~1 µs).
        self.run_options = ort.RunOptions()
        self.exit_columns: dict[tuple[int, int], np.ndarray] = {}
        # first input's shape -> everything a batch needs to run to the last exit
        self.plans: dict[tuple[int, ...], Plan] = {}
        self.capacity = 0
        self.reserve(1)

    # -- buffers and bindings -------------------------------------------------------------

    def reserve(self, rows: int) -> None:
        """Make every buffer hold at least ``rows`` samples (grow by doubling)."""
        if rows <= self.capacity:
            return
        cap = max(rows, 2 * self.capacity)
        self.stage = [lay.empty(cap) for lay in self.input_layouts]
        self.outputs: list[dict[str, Buffer]] = []
        for spec, lay in zip(self.manifest.segments, self.layouts):
            bufs = {name: Buffer(lay[name], cap, self.carry_device) for name in spec.carry}
            for name in (spec.logits, spec.score) if spec.has_head else ():  # read on the host
                if name:  # a plain graph's last exit has no score (it takes everyone)
                    bufs.setdefault(name, Buffer(lay[name], cap))
            self.outputs.append(bufs)
        self.steps: list[dict[int, Step]] = [{} for _ in self.sessions]
        self.plans.clear()  # they hold views of the old buffers
        self.scratch: dict[int, Buffer] = {}  # device carries' gather targets, made lazily
        self.capacity = cap

    def sources(self, i: int) -> list[Buffer | np.ndarray]:
        """What feeds segment i's inputs, in order: the staged inputs or i-1's carry."""
        if i == 0:
            return self.stage
        prev = self.manifest.segments[i - 1]
        return [self.outputs[i - 1][name] for name in prev.carry]

    def step(self, i: int, k: int) -> Step:
        """Segment i bound for a batch of k (cached)."""
        cached = self.steps[i].get(k)
        if cached is not None:
            return cached
        spec, outs = self.manifest.segments[i], self.outputs[i]
        io = self.sessions[i].io_binding()
        for name, src in zip(spec.inputs, self.sources(i)):
            if isinstance(src, np.ndarray):
                shape = [k, *src.shape[1:]]
                io.bind_input(name, "cpu", 0, src.dtype, shape, src.ctypes.data)
            else:
                src.bind_input(io, name, k)
        for name, buf in outs.items():
            buf.bind_output(io, name, k)
        input_sum = None
        if i == 0 and self.sums_inputs:
            total = np.full(1, np.nan, dtype=np.float32)
            io.bind_output(INPUT_SUM, "cpu", 0, total.dtype, [], total.ctypes.data)
            input_sum = memoryview(total)
        head = spec.has_head  # a body has neither logits nor a score
        score = bool(spec.score)  # a plain graph has no score
        step = Step(
            bound_runner(self.sessions[i], io, self.run_options),
            io,
            outs[spec.score].array[:k] if score else None,
            first_row(outs[spec.score].array) if score else None,
            outs[spec.logits].array[:k] if head else None,
            tuple(outs[name].rows(k) for name in spec.carry),
            input_sum,
        )
        self.steps[i][k] = step
        return step

    def run_step(self, i: int, step: Step) -> None:
        try:
            step.run()
        except ORT_ERRORS as err:
            self.raise_failed(i, err)

    def raise_failed(self, i: int, err: Exception) -> None:
        text = first_line(err)
        raise BundleError(f"{self.manifest.segments[i].file} failed: {text}") from err

    def stage_inputs(self, xs: tuple[np.ndarray, ...]) -> int:
        n = len(xs[0])
        self.reserve(n)
        for buf, x in zip(self.stage, xs):
            buf[:n] = x
        return n

    def segment_step(self, i: int, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> Step:
        """Put ``feeds`` where segment i reads its inputs; return its step for that batch."""
        names = self.manifest.segments[i].inputs
        if isinstance(feeds, Mapping):
            missing = [n for n in names if n not in feeds]
            if missing:
                raise InputError(
                    f"segment {i} input {missing[0]!r} is missing; expected {list(names)}"
                )
            feeds = [feeds[n] for n in names]
        if len(feeds) != len(names):
            raise InputError(
                f"segment {i} takes {len(names)} inputs {list(names)}; got {len(feeds)}"
            )
        k = len(feeds[0]) if isinstance(feeds[0], np.ndarray) and feeds[0].ndim else 0
        if k < 1:
            raise InputError(f"segment {i} input {names[0]!r} has no batch; expected >= 1 row")
        self.reserve(k)
        for name, x, src in zip(names, feeds, self.sources(i)):
            layout = src.layout if isinstance(src, Buffer) else Layout(src.shape[1:], src.dtype)
            if (
                not isinstance(x, np.ndarray)
                or x.dtype != layout.dtype
                or x.shape != (k, *layout.row_shape)
            ):
                got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
                raise InputError(
                    f"segment {i} input {name!r} is {got}; expected {layout.dtype} "
                    f"{(k, *layout.row_shape)}"
                )
            if isinstance(src, np.ndarray):
                if x.ctypes.data != src.ctypes.data:
                    src[:k] = x
            elif src.array is not None:
                if x.ctypes.data != src.ptr:  # the carry just returned: already in place
                    src.array[:k] = x
            else:
                self.mover.upload(x, src)
        return self.step(i, k)

    # -- the early-exit pass --------------------------------------------------------------

    def forward(
        self,
        xs: Sequence[np.ndarray],
        thresholds: tuple[float, ...],
        state_update: Callable | None,
        plan: Plan | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Run a batch with per-sample exits: (logits [n, C], exit_index [n], ms per segment).

        ``plan``: the batch's plan when the caller has it (``xs`` checked against it).
        Every Python operation here costs microseconds right after a segment has flushed
        the caches, so the common paths (nobody leaves; one sample) do as few as possible:
        while nobody has left, the steps come from the plan.
        """
        if plan is None:
            plan = self.plan(xs[0].shape)
        whole = plan.steps  # every segment bound for the whole batch
        for view, x in zip(plan.stage, xs):
            view[...] = x  # ~0.4 µs less than slicing the buffer every call
        n = k = len(xs[0])
        logits = exit_index = None  # allocated when the first sample leaves
        seg_ms = [0.0] * len(self.sessions)
        alive: np.ndarray | None = None  # None: row j is still sample j
        state: RuntimeState | None = None  # a runtime-decided criterion's (patience, Q-exit)
        last = len(self.sessions) - 1
        t = perf_counter()
        for i, threshold in enumerate(thresholds):
            step = whole[i] if k == n else self.steps[i].get(k) or self.step(i, k)
            try:
                step.run()
            except ORT_ERRORS as err:
                self.raise_failed(i, err)
            now = perf_counter()
            seg_ms[i], t = (now - t) * 1e3, now
            if i == last:
                if logits is None:  # nobody left early: the last exit's buffer is the answer
                    if plan.input_sum is not None and not isfinite(plan.input_sum[0]):
                        refuse_nonfinite(xs, self.manifest.inputs)
                    return step.logits.copy(), self.exit_column(i, n), seg_ms
                logits[alive] = step.logits
                exit_index[alive] = self.first_exit + i
                break
            if state_update is not None:
                state = state_update(state, step.logits, step.score)
                score = state[0]
            elif threshold == _INF:
                continue  # nobody leaves here: skip even reading the score
            else:
                score = step.score
            if k == 1:  # one sample: a scalar test is 10x cheaper than a ufunc + any()
                if not (score[0] if state is not None else step.first_score[0]) >= threshold:
                    continue
                leaving = _ONE
            else:
                leaving = score >= threshold
                if not leaving.any():
                    continue
            if logits is None:  # float32, as every exit output is returned
                logits = np.empty((n, *self.output_layout.row_shape), dtype=np.float32)
                exit_index = np.empty(n, dtype=np.int64)
            done = np.flatnonzero(leaving)
            rows = done if alive is None else alive[done]
            logits[rows] = step.logits[done]
            exit_index[rows] = self.first_exit + i
            if done.size == k:
                break
            keep = np.flatnonzero(~leaving)
            alive = keep if alive is None else alive[keep]
            if state is not None:
                state = (state[0][keep], state[1][keep])  # (value, what it keeps)
            self.compact(step.carry, keep)
            k = keep.size
            t = perf_counter()  # the compaction is orchestration, not segment time
        # The first graph summed the inputs (as in run_plan): read once every segment ran.
        if plan.input_sum is not None and not isfinite(plan.input_sum[0]):
            refuse_nonfinite(xs, self.manifest.inputs)
        return logits, exit_index, seg_ms

    def forward_to_last(
        self, xs: Sequence[np.ndarray], plan: Plan | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """``forward`` when no exit before the last can fire (every threshold there inf).

        ``plan``: the batch's plan when the caller has it (``xs`` checked against it).
        Returns (logits, exit_index, stamps): ``stamps`` are perf_counter seconds before
        the first segment and after each (``Result`` turns them into ``segment_ms`` when
        asked). Nobody leaves, so no score is read and no patience counter kept.
        """
        if plan is None:
            plan = self.plan(xs[0].shape)
        stamps: list[float] = []
        return self.run_plan(plan, xs, stamps), plan.exit_index, stamps

    def run_plan(self, plan: Plan, xs: Sequence[np.ndarray], stamps: list[float]) -> np.ndarray:
        """Stage ``xs`` (already checked against the plan), run every segment, and return
        a copy of the last logits; appends to ``stamps`` the perf_counter seconds before
        the first segment and after each.

        Nothing but the clock runs between and after the segments: everything else a call
        needs is done before them, while the interpreter's data is still in the caches.
        """
        for view, x in zip(plan.stage, xs):
            view[...] = x
        mark = stamps.append
        mark(perf_counter())
        try:
            for run in plan.runs:
                run()
                mark(perf_counter())
        except ORT_ERRORS as err:
            self.raise_failed(len(stamps) - 1, err)
        # The graph summed the inputs: one float read here, instead of a numpy reduction
        # before the call. Not finite: an input holds NaN or inf, or finite numbers
        # overflowed float32, which the exact check tells apart.
        if plan.input_sum is not None and not isfinite(plan.input_sum[0]):
            refuse_nonfinite(xs, self.manifest.inputs)
        return plan.logits.copy()

    def known_plan(self, inputs: object) -> Plan | None:
        """The cached plan for inputs exactly like an earlier call's (one array, or a list
        or tuple of arrays, of the same dtypes and shapes), else None. A hit means the
        inputs need no other check than for NaN and inf (``Plan.float_inputs``).

        Dtypes are compared by identity first (numpy's builtin dtypes are singletons),
        then by equality: an unpickled array (one sent through multiprocessing) carries
        its own equal dtype object, and would otherwise take the checked path (~20 us cold).
        One function, no helper: each Python frame costs about a microsecond on a cold call.
        """
        if type(inputs) is np.ndarray:
            plan = self.plans.get(inputs.shape)
            if plan is None or inputs.dtype is plan.single_dtype:
                return plan
            single = plan.single_dtype  # None: the bundle takes more than one input
            return plan if single is not None and inputs.dtype == single else None
        if type(inputs) not in _SEQUENCES or not inputs or type(inputs[0]) is not np.ndarray:
            return None
        plan = self.plans.get(inputs[0].shape)
        if plan is None or len(inputs) != len(plan.inputs):
            return None
        for x, (dtype, shape) in zip(inputs, plan.inputs):
            if type(x) is not np.ndarray or x.shape != shape:
                return None
            if x.dtype is not dtype and x.dtype != dtype:
                return None
        return plan

    def plan(self, shape: tuple[int, ...]) -> Plan:
        return self.plans.get(shape) or self.make_plan(shape)

    def make_plan(self, shape: tuple[int, ...]) -> Plan:
        """The plan for inputs whose first one has ``shape`` (cached for batches up to
        MAX_SHARED_COLUMN, until the buffers grow)."""
        n = shape[0]
        self.reserve(n)
        steps = [self.step(i, n) for i in range(len(self.sessions))]
        plan = Plan(
            tuple(buf[:n] for buf in self.stage),
            tuple(step.run for step in steps),
            tuple(steps),
            steps[-1].logits,
            self.exit_column(len(steps) - 1, n),
            tuple((buf.dtype, buf[:n].shape) for buf in self.stage),
            self.stage[0].dtype if len(self.stage) == 1 else None,
            tuple(k for k, buf in enumerate(self.stage) if buf.dtype.kind == "f"),
            steps[0].input_sum,
        )
        if n <= MAX_SHARED_COLUMN:
            self.plans[shape] = plan
        return plan

    def exit_column(self, i: int, n: int) -> np.ndarray:
        """A read-only int64 [n] array of i, shared between calls.

        Right after a segment has run, any numpy call costs microseconds (its code is out
        of the caches), so the common "nobody left early" answer is a dict lookup.
        """
        column = self.exit_columns.get((i, n))
        if column is None:
            column = np.full(n, self.first_exit + i, dtype=np.int64)
            column.flags.writeable = False
            if n <= MAX_SHARED_COLUMN:
                self.exit_columns[(i, n)] = column
        return column

    def compact(self, carry: tuple, keep: np.ndarray) -> None:
        """Move the rows ``keep`` (ascending) of each carry to its front, in place."""
        for rows in carry:
            if isinstance(rows, np.ndarray):
                # mode="raise" makes numpy buffer the overlapping out=, so this is safe.
                np.take(rows, keep, axis=0, out=rows[: keep.size])
            else:
                buffer, k = rows
                if buffer.ptr not in self.scratch:
                    scratch = Buffer(buffer.layout, self.capacity, self.carry_device)
                    self.scratch[buffer.ptr] = scratch
                self.mover.compact(buffer, self.scratch[buffer.ptr], k, keep)

    def to_host(self, rows: np.ndarray | tuple[Buffer, int]) -> np.ndarray:
        if isinstance(rows, np.ndarray):
            return rows
        buffer, k = rows
        return self.mover.download(buffer, k)

    # -- every exit for every sample (calibration) ----------------------------------------

    def forward_all(
        self,
        xs: tuple[np.ndarray, ...],
        state_update: Callable | None,
        logits: np.ndarray,
        scores: np.ndarray,
    ) -> list[float]:
        """Fill ``logits`` [E, n, C] and ``scores`` [E, n] for one batch; seconds per seg."""
        n = self.stage_inputs(xs)
        seg_s = [0.0] * len(self.sessions)
        state = None
        for i in range(len(self.sessions)):
            step = self.step(i, n)
            t = perf_counter()
            self.run_step(i, step)
            seg_s[i] = perf_counter() - t
            logits[i] = step.logits
            if state_update is not None:
                state = state_update(state, step.logits, step.score)
                scores[i] = state[0]
            else:
                scores[i] = step.score
        return seg_s


def first_row(scores: np.ndarray) -> memoryview | np.ndarray:
    """Row 0 of ``scores`` as a memoryview when its items read as Python numbers (float32
    and float64 do), else as the numpy view."""
    view = scores[:1]
    return memoryview(view) if view.dtype in (np.float32, np.float64) else view


def all_infinite(thresholds: tuple[float, ...]) -> bool:
    """True when no exit before the last can take a sample (the last always does)."""
    return all(threshold == _INF for threshold in thresholds[:-1])
