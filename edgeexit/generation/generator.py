"""``Generator``: text generation over a decoder bundle, on the device (no torch), greedy
or sampled (``sampling.py``), returned whole or streamed token by token.

Three modes share one set of caches (``caches.py``):

- ``full``: every segment for every token; the baseline.
- ``self-speculative`` (LayerSkip, Kangaroo): the first ``k`` segments and their exit draft
  up to ``gamma`` tokens, one at a time, stopping early when the draft's confidence falls
  below ``draft_stop`` (Kangaroo's second exit). The remaining segments then run once over
  the drafted positions, from the hidden states the draft left and on top of the early
  segments' caches, never recomputing them. The longest agreeing prefix is kept, plus the
  full model's own next token, and the caches of rejected tokens are rolled back (a length
  moves). Greedy output is the full model's, token for token, up to floating-point ties;
  sampled, each draft is kept with probability min(1, p/q), so the tokens follow full
  decoding's distribution exactly.
- ``early-exit`` (CALM): a token leaves at the first exit whose confidence reaches its
  threshold. The deeper segments' caches are filled when a later token next reaches them,
  by running those segments over the skipped positions from the hidden states they left
  with (EE-LLM's recompute), in the same call as the later token. Sampled, a token is
  drawn from the distribution of the exit it leaves at: not full decoding's distribution.

Each mode is a loop that adds the tokens it decides to a ``Transcript`` (which ends the text
at an end-of-text id, a stop sequence or the token limit) and pauses after each step; a
``Stream`` hands out the tokens that are final at each pause. Batch 1 (one sequence):
``generate_many`` runs prompts one after another. Every call's state lives in the
Generator: a lock serializes calls, held by a stream until it ends or is closed.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Generator as Steps
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

from edgeexit.bundle import load_graphs
from edgeexit.errors import BundleError, InputError
from edgeexit.generation.caches import (
    FusedSegmentRunner,
    HeadRunner,
    LayerCache,
    SegmentRunner,
    bytes_in_words,
    check_memory,
)
from edgeexit.generation.graphs import check_draft_graphs, check_graphs, check_onnxruntime
from edgeexit.generation.manifest import DecoderManifest, read_decoder_manifest
from edgeexit.generation.options import MODES, SpeculativeOptions, exit_thresholds
from edgeexit.generation.sampling import Sampler, SamplingOptions
from edgeexit.generation.text import BYTES
from edgeexit.generation.transcript import Transcript, stop_sequences
from edgeexit.runtime.session import open_session, resolve_config
from edgeexit.targets import Target, load_target


@dataclass(frozen=True)
class Generation:
    """What one ``generate`` call produced, and how."""

    mode: str
    prompt_tokens: int
    tokens: tuple[int, ...]
    seconds: float
    stopped: str  # 'eos', 'stop' (a stop sequence, cut off) or 'max_new_tokens'
    exits: tuple[int, ...] = ()  # early-exit: the exit each generated token left at
    drafted: int = 0  # self-speculative: tokens drafted, and accepted of them
    accepted: int = 0
    verifications: int = 0
    draft_steps: int = 0  # passes through the draft segments (drafts, and stopped ones)
    seed: int | None = None  # the seed the tokens were sampled with (None: greedy)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else math.inf

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def mean_exit_depth(self, num_exits: int) -> float | None:
        """Mean exit over generated tokens, as a fraction of the depth (1: the last)."""
        if not self.exits:
            return None
        return float(np.mean(self.exits) + 1) / num_exits

    def to_json(self, num_exits: int) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "prompt_tokens": self.prompt_tokens,
            "tokens": list(self.tokens),
            "new_tokens": len(self.tokens),
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "stopped": self.stopped,
            "acceptance_rate": self.acceptance_rate,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "verifications": self.verifications,
            "draft_steps": self.draft_steps,
            "mean_exit_depth": self.mean_exit_depth(num_exits),
            "exits": list(self.exits),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class _Request:
    """One prompt's call, every argument checked."""

    ids: np.ndarray
    max_new: int
    mode: str
    speculative: SpeculativeOptions | None
    thresholds: tuple[float, ...] | None
    sampling: SamplingOptions | None
    stops: tuple[tuple[int, ...], ...]


class Stream:
    """The token ids of one call, each as soon as it is final (self-speculative: a
    verification's accepted tokens together); ``result`` is the ``Generation`` once the
    stream has ended (None before). Until then the Generator is held: iterate to the end,
    or ``close()`` it (``with gen.stream(...) as tokens:`` does)."""

    def __init__(self, steps: Steps[int, None, Generation]) -> None:
        self._steps = steps
        self.result: Generation | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> int:
        try:
            return next(self._steps)
        except StopIteration as end:
            if end.value is not None:  # the first end; later ones carry nothing
                self.result = end.value
            raise

    def close(self) -> None:
        self._steps.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Generator:
    """A decoder bundle loaded for a device, ready to generate.

    Example::

        gen = Generator("decoder-bundle/", target="rpi5")
        out = gen.generate([72, 105], max_new_tokens=32, mode="self-speculative")
        out.tokens, out.tokens_per_s, out.acceptance_rate
        for token in gen.stream([72, 105], sampling=SamplingOptions(temperature=0.8),
                                stop=[[10, 10]]):
            ...
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        *,
        target: str | os.PathLike | Target | None = None,
        threads: int | None = None,
    ) -> None:
        self.target = load_target(target)
        config = resolve_config(self.target, None, threads)
        self.manifest: DecoderManifest = read_decoder_manifest(bundle_dir)
        m = self.manifest
        # sizes first (cheap, and nothing is allocated yet), then the files, then the
        # graphs against the sizes, then the arrays
        self.memory = check_memory(m, f"bundle {bundle_dir}")
        check_onnxruntime(m)
        sessions = [open_session(s, config) for s in load_graphs(bundle_dir, m.all_graphs)]
        sessions, drafting = sessions[: len(m.graphs)], sessions[len(m.graphs) :]
        check_graphs(m, sessions)
        check_draft_graphs(m, drafting)
        try:
            self.layers = [[LayerCache(m) for _ in range(s.layers)] for s in m.segments]
            runner = FusedSegmentRunner if m.fused else SegmentRunner
            self.segments = [
                runner(sess, spec.file, i == 0, caches, m.dim, m.max_positions)
                for i, (sess, spec, caches) in enumerate(zip(sessions, m.segments, self.layers))
            ]
            self.head = HeadRunner(sessions[-1], m)
            # a quantized draft writes the same caches (the verification rewrites them)
            self.draft_segments = [
                FusedSegmentRunner(sess, spec.file, i == 0, caches, m.dim, m.max_positions)
                for i, (sess, spec, caches) in enumerate(
                    zip(drafting, m.draft.segments, self.layers)
                )
            ] if m.draft else []  # fmt: skip
            self.draft_head = HeadRunner(drafting[-1], m, m.draft.head.file) if m.draft else None
            self._hidden = np.empty((m.max_positions, m.dim), dtype=np.float32)
        except MemoryError as err:
            raise BundleError(
                f"bundle {bundle_dir} needs {bytes_in_words(self.memory.total_bytes)} for its "
                "caches and buffers; this machine could not allocate them"
            ) from err
        self._eos = frozenset(m.eos_token_ids)  # any of them ends a text
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread holding the lock

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    @property
    def byte_level(self) -> bool:
        """Whether a token is a byte (``text``): stop sequences may then be text."""
        return self.manifest.extra.get("tokenizer") == BYTES

    def generate(
        self,
        prompt: Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int = 32,
        mode: str = "full",
        speculative: SpeculativeOptions | None = None,
        thresholds: Sequence[float] | None = None,
        sampling: SamplingOptions | None = None,
        stop: Sequence[str | Sequence[int]] | None = None,
    ) -> Generation:
        """Continue ``prompt`` (token ids), up to ``max_new_tokens``, an end-of-text token
        or a ``stop`` sequence (text for byte-level bundles, else lists of token ids; the
        text ends before it). Greedy unless ``sampling`` says otherwise. ``speculative`` and
        ``thresholds`` (one per exit but the last; early-exit) default to what calibrate
        chose (the manifest's ``generation``)."""
        return self._whole(self._request(prompt, max_new_tokens, mode, speculative,
                                         thresholds, sampling, stop))  # fmt: skip

    def stream(
        self,
        prompt: Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int = 32,
        mode: str = "full",
        speculative: SpeculativeOptions | None = None,
        thresholds: Sequence[float] | None = None,
        sampling: SamplingOptions | None = None,
        stop: Sequence[str | Sequence[int]] | None = None,
    ) -> Stream:
        """``generate``, token by token: the arguments are checked now, and the tokens are
        decoded as the stream is iterated (``text.pieces`` makes text of them)."""
        request = self._request(prompt, max_new_tokens, mode, speculative, thresholds,
                                sampling, stop)  # fmt: skip
        return Stream(self._run(request))

    def generate_many(
        self,
        prompts: Sequence[Sequence[int] | np.ndarray],
        *,
        max_new_tokens: int = 32,
        mode: str = "full",
        speculative: SpeculativeOptions | None = None,
        thresholds: Sequence[float] | None = None,
        sampling: SamplingOptions | None = None,
        stop: Sequence[str | Sequence[int]] | None = None,
    ) -> list[Generation]:
        """``generate`` for each prompt, with the same options, one after another (the
        caches hold one sequence). Every prompt is checked before any is decoded. With a
        ``seed``, each prompt's tokens are what ``generate`` gives it alone with that seed."""
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence | np.ndarray):
            raise InputError(
                f"the prompts are {type(prompts).__name__}; expected a list of prompts"
            )
        requests = []
        for i, prompt in enumerate(prompts):
            try:
                requests.append(self._request(prompt, max_new_tokens, mode, speculative,
                                              thresholds, sampling, stop))  # fmt: skip
            except InputError as err:
                raise InputError(f"prompt {i}: {err}") from err
        return [self._whole(request) for request in requests]

    def _whole(self, request: _Request) -> Generation:
        with Stream(self._run(request)) as tokens:
            for _ in tokens:
                pass
        return tokens.result

    def _run(self, r: _Request) -> Steps[int, None, Generation]:
        """Decode, yielding each token once it is final; return the Generation. The time
        spent waiting for the consumer of a stream is not counted in its seconds."""
        with self._exclusive():
            sampler, out = Sampler(r.sampling), Transcript(r.max_new, self._eos, r.stops)
            steps, shown, stats = self._steps(r, sampler, out), 0, None
            start, paused = perf_counter(), 0.0
            while stats is None:
                try:
                    next(steps)
                except StopIteration as end:
                    stats = end.value
                ready = out.settled()
                for token in out.tokens[shown:ready]:
                    waiting = perf_counter()
                    yield token
                    paused += perf_counter() - waiting
                shown = ready
            seconds = perf_counter() - start - paused
        return Generation(r.mode, len(r.ids), tuple(out.tokens), seconds, out.stopped,
                          seed=sampler.seed, **stats)  # fmt: skip

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The Generator's caches, for one call at a time. A second call from the thread
        that holds them (an open stream) would wait for itself forever: refused."""
        if self._owner == threading.get_ident():
            raise InputError(
                "this Generator is in the middle of a stream in this thread: iterate it to the "
                "end or close() it before the next call"
            )
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    def _steps(self, r: _Request, sampler: Sampler, out: Transcript) -> Steps[None, None, dict]:
        if r.mode == "full":
            return self._full(r.ids, sampler, out)
        if r.mode == "self-speculative":
            return self._speculative(r.ids, r.speculative, sampler, out)
        return self._early_exit(r.ids, r.thresholds, sampler, out)

    # -- the three modes ------------------------------------------------------------------

    def _full(self, ids: np.ndarray, sampler: Sampler, out: Transcript) -> Steps[None, None, dict]:
        out.add([self._prefill(ids, sampler)])
        yield
        while not out.done:
            hidden = self._through(np.array([out.last]), self.num_exits)
            out.add([sampler.pick(self._last_logits(hidden))])
            yield
        return {}

    def _speculative(
        self, ids: np.ndarray, options: SpeculativeOptions, sampler: Sampler, out: Transcript
    ) -> Steps[None, None, dict]:
        k, eos = options.k, self._eos
        early, deep = self.segments[:k], self.segments[k:]
        quantized = bool(self.draft_segments)  # a draft of its own: verify every segment
        drafter, draft_head = (self.draft_segments[:k], self.draft_head) if quantized else (
            early, self.head)  # fmt: skip
        out.add([self._prefill(ids, sampler)])
        yield
        drafted = accepted = verifications = steps = 0
        while not out.done:
            base = early[0].length  # every segment holds positions < base
            hiddens, drafts, qs = [], [], []  # qs: the distributions drafts were drawn from
            fed = [out.last]  # each draft step's input token: one step per token fed
            room = min(options.gamma, out.max_new - out.generated)  # tokens still wanted
            for segment in drafter:
                segment.length = base
            while True:  # draft: the early segments, one token at a time
                x = np.array(fed[-1:])
                for segment in drafter:
                    x = segment.run(x)
                if not quantized:  # the deep segments go on from the draft's hidden states
                    hiddens.append(x.copy())
                logits, confidence = draft_head.run(x)
                if confidence[-1] < options.draft_stop:
                    break
                token, q = sampler.draft(logits[-1])
                drafts.append(token)
                qs.append(q)
                if token in eos or len(drafts) >= room:
                    break
                fed.append(token)
            verifications, steps = verifications + 1, steps + len(fed)
            if quantized:  # every segment at full precision over the drafted positions
                for segment in early:
                    segment.length = base
                hidden = self._through(np.array(fed), self.num_exits)
            else:  # the deep segments, once, over all, from the draft's hidden states
                hidden = np.concatenate(hiddens)
                for segment in deep:
                    hidden = segment.run(hidden)
            m, new = sampler.verify(drafts, qs, self.head.run(hidden)[0])
            drafted, accepted = drafted + len(drafts), accepted + m
            kept = base + min(m + 1, len(fed))  # positions whose inputs were right
            for segment in self.segments:
                segment.length = kept  # roll back the rejected tokens' keys and values
            out.add(new)  # cut at an end of text or a stop sequence inside the drafts
            yield
        return {"drafted": drafted, "accepted": accepted, "verifications": verifications,
                "draft_steps": steps}  # fmt: skip

    def _early_exit(
        self, ids: np.ndarray, thresholds: tuple[float, ...], sampler: Sampler, out: Transcript
    ) -> Steps[None, None, dict]:
        out.add([self._prefill(ids, sampler)])
        exits = [self.num_exits - 1]
        yield
        while not out.done:
            q = self.segments[0].length  # the new token's position
            hidden = self.segments[0].run(np.array([out.last]))[-1:]
            for i in range(1, self.num_exits + 1):
                if i == self.num_exits:  # the last exit takes every token left
                    exit_at, logits = i - 1, self.head.run(hidden)[0][-1]
                    break
                logits = self._confident_logits(hidden, thresholds[i - 1])
                if logits is not None:
                    exit_at = i - 1
                    break
                segment = self.segments[i]
                skipped = self._hidden[segment.length : q]  # positions it has not seen yet
                states = segment.run(np.concatenate([skipped, hidden]))
                self._hidden[q - len(skipped) : q] = states[:-1]
                hidden = states[-1:]
            self._hidden[q] = hidden[0]
            out.add([sampler.pick(logits)])  # drawn from the exit it leaves at
            exits.append(exit_at)
            yield
        return {"exits": tuple(exits[: len(out.tokens)])}

    # -- shared steps ---------------------------------------------------------------------

    def _prefill(self, ids: np.ndarray, sampler: Sampler) -> int:
        """A fresh sequence: every segment over the prompt; the full model's next token."""
        for segment in self.segments:
            segment.length = 0
        hidden = self._through(ids, self.num_exits)
        self._hidden[: len(ids)] = hidden
        return sampler.pick(self._last_logits(hidden))

    def _through(self, x: np.ndarray, stop: int) -> np.ndarray:
        """``x`` through segments 0..stop-1."""
        for segment in self.segments[:stop]:
            x = segment.run(x)
        return x

    def _last_logits(self, hidden: np.ndarray) -> np.ndarray:
        """The head's logits [V] at the last position (a view the next head call reuses)."""
        return self.head.run(hidden[-1:])[0][-1]

    def _confident_logits(self, hidden: np.ndarray, threshold: float) -> np.ndarray | None:
        """The exit's logits for the last position if its confidence reaches
        ``threshold``, else None (the head is not even run for an inf threshold: never)."""
        if threshold == math.inf:
            return None
        logits, confidence = self.head.run(hidden)
        return logits[-1] if confidence[-1] >= threshold else None

    # -- checks ---------------------------------------------------------------------------

    def _request(
        self,
        prompt: Sequence[int] | np.ndarray,
        max_new: int,
        mode: str,
        speculative: SpeculativeOptions | None,
        thresholds: Sequence[float] | None,
        sampling: SamplingOptions | None,
        stop: Sequence[str | Sequence[int]] | None,
    ) -> _Request:
        ids = self._check(prompt, max_new, mode)
        choice, spec, chosen = self.manifest.generation, None, None
        if mode == "self-speculative":
            options = speculative or SpeculativeOptions(**choice.get("self_speculative", {}))
            spec = self._checked_spec(options)
        elif mode == "early-exit":
            given = thresholds if thresholds is not None else choice.get("early_exit")
            chosen = self._checked_thresholds(given)
        if sampling is not None and not isinstance(sampling, SamplingOptions):
            raise InputError(f"`sampling` is {type(sampling).__name__}; expected SamplingOptions")
        stops = stop_sequences(stop, self.manifest.vocab_size, self.byte_level)
        return _Request(ids, max_new, mode, spec, chosen, sampling, stops)

    def _check(self, prompt: Sequence[int] | np.ndarray, max_new: int, mode: str) -> np.ndarray:
        if mode not in MODES:
            raise InputError(f"mode {mode!r}; expected one of {', '.join(MODES)}")
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise InputError(f"`max_new_tokens` is {max_new!r}; expected a positive integer")
        try:
            ids = np.asarray(prompt)
        except (TypeError, ValueError) as err:  # ragged lists
            raise InputError(f"the prompt is not a sequence of token ids: {err}") from err
        if ids.ndim != 1:
            raise InputError(
                f"the prompt is an array of shape {list(ids.shape)}; expected one sequence of "
                "token ids (1-D)"
            )
        if ids.size == 0:
            raise InputError("the prompt is empty; expected at least one token")
        if ids.dtype.kind not in "iu":
            raise InputError(f"prompt ids are {ids.dtype}; expected integers")
        vocab = self.manifest.vocab_size
        bad = np.flatnonzero((ids < 0) | (ids >= vocab))
        if bad.size:
            raise InputError(
                f"prompt id {int(ids[bad[0]])} at position {int(bad[0])} is outside the "
                f"vocabulary; expected 0..{vocab - 1}"
            )
        need, room = len(ids) + max_new - 1, self.manifest.max_positions
        if need > room:
            raise InputError(
                f"a prompt of {len(ids)} tokens and {max_new} new ones need {need} positions; "
                f"the bundle's caches hold {room}: shorten the prompt or `max_new_tokens`"
            )
        return ids.astype(np.int64)

    def _checked_spec(self, options: SpeculativeOptions) -> SpeculativeOptions:
        if not isinstance(options, SpeculativeOptions):
            raise InputError(
                f"`speculative` is {type(options).__name__}; expected SpeculativeOptions"
            )
        if not options.k < self.num_exits:
            raise InputError(
                f"draft depth k is {options.k}; expected 1..{self.num_exits - 1} (segments)"
            )
        return options

    def _checked_thresholds(self, chosen: Sequence[float] | None) -> tuple[float, ...]:
        if chosen is None:
            raise InputError(
                "early-exit decoding needs thresholds, one per exit but the last: pass them, "
                "or calibrate the bundle for generation"
            )
        return exit_thresholds(chosen, self.num_exits)
