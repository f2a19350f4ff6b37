"""``Generator``: greedy text generation over a decoder bundle, on the device (no torch).

Three modes share one set of caches (``caches.py``):

- ``full``: every segment for every token; the baseline.
- ``self-speculative`` (LayerSkip, Kangaroo): the first ``k`` segments and their exit draft
  up to ``gamma`` tokens, one at a time, stopping early when the draft's confidence falls
  below ``draft_stop`` (Kangaroo's second exit). The remaining segments then run once over
  the drafted positions, from the hidden states the draft left and on top of the early
  segments' caches, never recomputing them. The longest agreeing prefix is kept, plus the
  full model's own next token, and the caches of rejected tokens are rolled back (a length
  moves). Greedy output is the full model's, token for token, up to floating-point ties.
- ``early-exit`` (CALM): a token leaves at the first exit whose confidence reaches its
  threshold. The deeper segments' caches are filled when a later token next reaches them,
  by running those segments over the skipped positions from the hidden states they left
  with (EE-LLM's recompute), in the same call as the later token.

Batch 1 (one sequence). Every call's state lives in the Generator: a lock serializes calls.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

from edgeexit.bundle import load_graphs
from edgeexit.errors import BundleError, InputError
from edgeexit.generation.caches import (
    HeadRunner,
    LayerCache,
    SegmentRunner,
    bytes_in_words,
    check_memory,
)
from edgeexit.generation.graphs import check_graphs
from edgeexit.generation.manifest import DecoderManifest, read_decoder_manifest
from edgeexit.generation.options import MODES, SpeculativeOptions, exit_thresholds
from edgeexit.runtime.session import open_session, resolve_config
from edgeexit.targets import Target, load_target


@dataclass(frozen=True)
class Generation:
    """What one ``generate`` call produced, and how."""

    mode: str
    prompt_tokens: int
    tokens: tuple[int, ...]
    seconds: float
    stopped: str  # 'eos' or 'max_new_tokens'
    exits: tuple[int, ...] = ()  # early-exit: the exit each generated token left at
    drafted: int = 0  # self-speculative: tokens drafted, and accepted of them
    accepted: int = 0
    verifications: int = 0
    draft_steps: int = 0  # passes through the draft segments (drafts, and stopped ones)
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
        }


class Generator:
    """A decoder bundle loaded for a device, ready to generate.

    Example::

        gen = Generator("decoder-bundle/", target="rpi5")
        out = gen.generate([72, 105], max_new_tokens=32, mode="self-speculative")
        out.tokens, out.tokens_per_s, out.acceptance_rate
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
        sessions = [open_session(s, config) for s in load_graphs(bundle_dir, m.graphs)]
        check_graphs(m, sessions)
        try:
            self.layers = [[LayerCache(m) for _ in range(s.layers)] for s in m.segments]
            self.segments = [
                SegmentRunner(sess, spec.file, i == 0, caches, m.dim, m.max_positions)
                for i, (sess, spec, caches) in enumerate(zip(sessions, m.segments, self.layers))
            ]
            self.head = HeadRunner(sessions[-1], m)
            self._hidden = np.empty((m.max_positions, m.dim), dtype=np.float32)
        except MemoryError as err:
            raise BundleError(
                f"bundle {bundle_dir} needs {bytes_in_words(self.memory.total_bytes)} for its "
                "caches and buffers; this machine could not allocate them"
            ) from err
        self._eos = frozenset(m.eos_token_ids)  # any of them ends a text
        self._lock = threading.Lock()

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    def generate(
        self,
        prompt: Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int = 32,
        mode: str = "full",
        speculative: SpeculativeOptions | None = None,
        thresholds: Sequence[float] | None = None,
    ) -> Generation:
        """Greedy continuation of ``prompt`` (token ids), up to ``max_new_tokens`` or the
        end-of-text token. ``speculative`` and ``thresholds`` (one per exit but the last;
        early-exit) default to what calibrate chose (the manifest's ``generation``)."""
        ids = self._check(prompt, max_new_tokens, mode)
        choice = self.manifest.generation
        with self._lock:
            start = perf_counter()
            if mode == "full":
                result = self._full(ids, max_new_tokens)
            elif mode == "self-speculative":
                options = speculative or SpeculativeOptions(**choice.get("self_speculative", {}))
                result = self._speculative(ids, max_new_tokens, self._checked_spec(options))
            else:
                chosen = thresholds if thresholds is not None else choice.get("early_exit")
                result = self._early_exit(ids, max_new_tokens, self._checked_thresholds(chosen))
            seconds = perf_counter() - start
        tokens, stopped, stats = result
        return Generation(mode, len(ids), tuple(tokens), seconds, stopped, **stats)

    # -- the three modes ------------------------------------------------------------------

    def _full(self, ids: np.ndarray, max_new: int) -> tuple[list[int], str, dict]:
        token = self._prefill(ids)
        out = [token]
        while not self._done(out, max_new):
            token = self._next(self._through(np.array([token]), self.num_exits))
            out.append(token)
        return out, self._stopped(out), {}

    def _speculative(
        self, ids: np.ndarray, max_new: int, options: SpeculativeOptions
    ) -> tuple[list[int], str, dict]:
        k, eos = options.k, self._eos
        early, deep = self.segments[:k], self.segments[k:]
        out = [self._prefill(ids)]
        drafted = accepted = verifications = steps = 0
        while not self._done(out, max_new):
            base = early[0].length  # every segment holds positions < base
            pending, hiddens, drafts = out[-1], [], []
            room = min(options.gamma, max_new - len(out))  # tokens still wanted
            x = np.array([pending])
            while True:  # draft: the early segments, one token at a time
                hiddens.append(self._through(x, k).copy())
                logits, confidence = self.head.run(hiddens[-1])
                if confidence[-1] < options.draft_stop:
                    break
                drafts.append(int(logits[-1].argmax()))
                if drafts[-1] in eos or len(drafts) >= room:
                    break
                x = np.array([drafts[-1]])
            verifications, steps = verifications + 1, steps + len(hiddens)
            hidden = np.concatenate(hiddens)  # verify: the deep segments, once, over all
            for segment in deep:
                hidden = segment.run(hidden)
            predictions = self.head.run(hidden)[0].argmax(axis=1)
            m = 0
            while m < len(drafts) and drafts[m] == predictions[m]:
                m += 1
            drafted, accepted = drafted + len(drafts), accepted + m
            new = drafts[:m] + ([int(predictions[m])] if m < len(hiddens) else [])
            kept = base + min(m + 1, len(hiddens))  # positions whose inputs were right
            for segment in self.segments:
                segment.length = kept  # roll back the rejected tokens' keys and values
            out += self._until_eos(new)
        out = out[:max_new]
        stats = {"drafted": drafted, "accepted": accepted, "verifications": verifications,
                 "draft_steps": steps}  # fmt: skip
        return out, self._stopped(out), stats

    def _early_exit(
        self, ids: np.ndarray, max_new: int, thresholds: tuple[float, ...]
    ) -> tuple[list[int], str, dict]:
        out, exits = [self._prefill(ids)], [self.num_exits - 1]
        while not self._done(out, max_new):
            q = self.segments[0].length  # the new token's position
            hidden = self.segments[0].run(np.array([out[-1]]))[-1:]
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
            out.append(int(logits.argmax()))
            exits.append(exit_at)
        out = out[:max_new]
        return out, self._stopped(out), {"exits": tuple(exits[: len(out)])}

    # -- shared steps ---------------------------------------------------------------------

    def _prefill(self, ids: np.ndarray) -> int:
        """A fresh sequence: every segment over the prompt; the full model's next token."""
        for segment in self.segments:
            segment.length = 0
        hidden = self._through(ids, self.num_exits)
        self._hidden[: len(ids)] = hidden
        return self._next(hidden)

    def _through(self, x: np.ndarray, stop: int) -> np.ndarray:
        """``x`` through segments 0..stop-1."""
        for segment in self.segments[:stop]:
            x = segment.run(x)
        return x

    def _next(self, hidden: np.ndarray) -> int:
        return int(self.head.run(hidden[-1:])[0][-1].argmax())

    def _confident_logits(self, hidden: np.ndarray, threshold: float) -> np.ndarray | None:
        """The exit's logits for the last position if its confidence reaches
        ``threshold``, else None (the head is not even run for an inf threshold: never)."""
        if threshold == math.inf:
            return None
        logits, confidence = self.head.run(hidden)
        return logits[-1] if confidence[-1] >= threshold else None

    def _done(self, out: list[int], max_new: int) -> bool:
        return len(out) >= max_new or out[-1] in self._eos

    def _until_eos(self, tokens: list[int]) -> list[int]:
        ends = [i for i, t in enumerate(tokens) if t in self._eos]
        return tokens[: ends[0] + 1] if ends else tokens

    def _stopped(self, out: list[int]) -> str:
        return "eos" if out and out[-1] in self._eos else "max_new_tokens"

    # -- checks ---------------------------------------------------------------------------

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
