"""A TCP proxy that behaves like a slow link: one-way delay and bandwidth, each direction.

This machine's kernel has no ``netem`` (tc cannot add delay), so the link a split bundle's
device talks through is emulated here, in user space: bytes wait for the link to be free
(serialisation at ``mbit_s``), then for the propagation delay (half the round trip), in
order. Used by benchmarks/serving_links.py; never by edgeexit itself.
"""

from __future__ import annotations

import asyncio
import threading
import time


class LinkProxy:
    """Listens on 127.0.0.1:``port`` (0: any free port) and forwards to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], rtt_ms: float, mbit_s: float) -> None:
        self.upstream, self.delay_s, self.bytes_per_s = upstream, rtt_ms / 2e3, mbit_s * 1e6 / 8
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _connection(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._direction(reader, up_writer),
                             self._direction(up_reader, writer))  # fmt: skip

    async def _direction(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        deliver = asyncio.ensure_future(self._deliver(queue, writer))
        free_at = 0.0
        while True:
            chunk = await reader.read(16384)
            now = time.monotonic()
            if not chunk:
                await queue.put((now + self.delay_s, b""))
                break
            free_at = max(now, free_at) + len(chunk) / self.bytes_per_s
            await queue.put((free_at + self.delay_s, chunk))
        await deliver

    async def _deliver(self, queue: asyncio.Queue, writer) -> None:
        while True:
            at, chunk = await queue.get()
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
            await writer.drain()
