"""ONNX Runtime sessions configured from a device target, and ORT errors translated.

Everything that touches ``onnxruntime`` configuration lives here: thread count, spinning
(spinning intra-op threads burn power between inferences on a device, so targets turn it
off), graph optimization level, execution providers and the memory arena. ORT raises its own
exception types; they are turned into edgeexit errors here and chained, so callers only see
the error tree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgeexit.bundle import SegmentSource
from edgeexit.errors import BundleError, EdgeExitError, TargetError, first_line
from edgeexit.targets import Target

# Every exception type ONNX Runtime's native module defines (Fail, InvalidGraph, NoSuchFile,
# EPFail...): the set differs between versions, so it is read rather than listed.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    value
    for value in vars(ort.capi.onnxruntime_pybind11_state).values()
    if isinstance(value, type) and issubclass(value, Exception)
)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionConfig:
    """How every segment's session is built: resolved once from target + overrides."""

    providers: tuple[str, ...]
    provider_options: tuple[dict[str, Any], ...]
    intra_op_threads: int  # 0: ONNX Runtime's default (all cores)
    allow_spinning: bool
    graph_optimization: str

    @property
    def device(self) -> str:
        """'cuda' when the CUDA provider leads, else 'cpu': where carries live."""
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"


def resolve_config(
    target: Target, providers: list[str] | tuple[str, ...] | None, threads: int | None
) -> SessionConfig:
    """Merge a target with the caller's overrides, refusing what this ORT cannot do."""
    if providers is None:
        chosen, options = tuple(target.providers), tuple(target.provider_options)
    else:
        chosen, options = tuple(providers), ()
    if not chosen:
        raise TargetError("no execution providers given; expected e.g. ['CPUExecutionProvider']")
    available = ort.get_available_providers()
    missing = [p for p in chosen if p not in available]
    if missing:
        raise TargetError(
            f"execution provider {missing[0]} is not available in this onnxruntime; "
            f"available: {', '.join(available)}"
        )
    if options and len(options) != len(chosen):
        raise TargetError(
            f"target {target.name!r} has {len(options)} provider_options for "
            f"{len(chosen)} providers; expected one table per provider"
        )
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise TargetError(f"threads must be a non-negative integer (0 = all cores), got {threads}")
    if target.graph_optimization not in _OPT_LEVELS:
        raise TargetError(
            f"target {target.name!r} has graph_optimization {target.graph_optimization!r}; "
            f"expected one of {', '.join(_OPT_LEVELS)}"
        )
    return SessionConfig(
        providers=chosen,
        provider_options=options,
        intra_op_threads=threads if threads is not None else (target.intra_op_threads or 0),
        allow_spinning=target.allow_spinning,
        graph_optimization=target.graph_optimization,
    )


_shared_arena: bool | None = None  # None: not tried yet in this process


def shared_cpu_arena() -> bool:
    """Register one CPU memory arena for every session of this process (once); True if
    sessions can use it.

    Each session otherwise keeps its own arena, so the activations of segment i+1 land in
    memory segment i has never touched, while one graph reuses the same hot blocks from
    layer to layer. Sharing the arena gives the chain back the monolithic graph's memory
    reuse (docs/runtime.md has the figures), and holds one peak's worth of activations
    instead of one per segment.
    """
    global _shared_arena
    if _shared_arena is None:
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        try:
            ort.create_and_register_allocator(info, None)
            _shared_arena = True
        except (*ORT_ERRORS, AttributeError, TypeError):  # an ORT without it: private arenas
            _shared_arena = False
        except RuntimeError as err:
            # ORT 1.17 refuses a second registration (ours before this module was reloaded,
            # or the host application's own): one is there to share. Else private arenas.
            _shared_arena = "already been registered" in str(err)
    return _shared_arena


def session_options(config: SessionConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _OPT_LEVELS[config.graph_optimization]
    opts.log_severity_level = 3
    spin = "1" if config.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if shared_cpu_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def open_session(source: SegmentSource | Path, config: SessionConfig) -> ort.InferenceSession:
    """An InferenceSession for one verified segment (from its checked bytes when it has no
    external data, else from its path), or a BundleError naming the file."""
    if isinstance(source, SegmentSource):
        path, model = source.path, source.model
    else:
        path, model = Path(source), None
    try:
        return ort.InferenceSession(
            model if model is not None else str(path),
            sess_options=session_options(config),
            providers=list(config.providers),
            provider_options=[dict(o) for o in config.provider_options] or None,
        )
    except ORT_ERRORS as err:
        first = first_line(err)
        raise BundleError(f"ONNX Runtime cannot load {path.name}: {first}") from err


def cpu_session(
    model: bytes | str | os.PathLike,
    *,
    what: str,
    threads: int = 1,
    optimization: str = "all",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    save_as: Path | None = None,
    error: type[EdgeExitError] = BundleError,
) -> ort.InferenceSession:
    """A session outside any target, for the tools around the chain: validation at export,
    evaluation at compile, the ORT-format save (``save_as``), the row gather. The one place
    such sessions are built, and where ONNX Runtime's errors become ``error`` naming
    ``what``. ``threads`` 0: ONNX Runtime's default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = _OPT_LEVELS[optimization]
    if save_as is not None:
        options.optimized_model_filepath = str(save_as)
        options.add_session_config_entry("session.save_model_format", "ORT")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except ORT_ERRORS as err:
        raise error(f"ONNX Runtime cannot load {what}: {first_line(err)}") from err
