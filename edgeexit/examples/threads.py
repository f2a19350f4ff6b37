"""The demos run torch on one thread.

torch starts a thread per core, and on a machine that other jobs keep busy those threads
wait on each other at every operation. Measured on this 2-core machine at load 4: a step of
the generation demo's decoder took 4.9 s on 2 threads and 0.78 s on 1, an epoch of the
digits CNN 5.8 s and 2.3 s. One thread also keeps the demos' training from depending on
how many cores a machine has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block; the caller's setting after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
