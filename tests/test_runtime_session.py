"""Session settings: the CPU arena every segment session shares.

ONNX Runtime allows one shared CPU allocator per process; versions differ in what a second
registration does (1.32 ignores it, 1.17 raises), and the host application may have
registered its own. Sessions opt in only when an allocator is known to be there.
"""

from __future__ import annotations

from unittest import mock

import pytest

from edgeexit.runtime import session
from edgeexit.runtime.session import resolve_config, session_options, shared_cpu_arena
from edgeexit.targets import load_target


@pytest.fixture
def fresh_probe(monkeypatch):
    monkeypatch.setattr(session, "_shared_arena", None)


@pytest.mark.parametrize(
    ("error", "shared"),
    [
        (None, True),
        (
            RuntimeError("An allocator for this device has already been registered for sharing."),
            True,
        ),
        (RuntimeError("out of memory"), False),
        (AttributeError("no create_and_register_allocator"), False),
    ],
)
def test_the_arena_is_shared_only_when_one_is_registered(fresh_probe, error, shared):
    with mock.patch.object(
        session.ort, "create_and_register_allocator", side_effect=error
    ) as register:
        assert shared_cpu_arena() is shared
        assert shared_cpu_arena() is shared  # probed once per process
    assert register.call_count == 1
    config = resolve_config(load_target(None), None, 1)
    with mock.patch.object(session, "_shared_arena", shared):
        assert uses_env_allocators(session_options(config)) is shared


def uses_env_allocators(opts) -> bool:
    try:
        return opts.get_session_config_entry("session.use_env_allocators") == "1"
    except RuntimeError:  # ORT raises for a key never set
        return False


def test_sessions_share_the_arena_on_this_onnxruntime():
    config = resolve_config(load_target(None), None, 1)
    assert shared_cpu_arena()
    assert uses_env_allocators(session_options(config))
