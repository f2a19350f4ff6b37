"""The device's HTTP client to its server: standard library only, never blocking forever.

Every request has a deadline. Within it, a refused connection, a dropped one, or the
server saying it is busy (5xx, Ray Serve's 503 when its queue is full) is tried again
after a short pause; an answer the server means (4xx: this request is wrong) is not. When
the deadline passes, or the tries run out, ``LinkError`` says what happened last and the
caller answers from the device (``SplitRuntime``: a degraded answer).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from urllib.parse import urlsplit

from edgeexit.errors import EdgeExitError, InputError
from edgeexit.offload.wire import CONTENT_TYPE

MAX_ANSWER_BYTES = 256 << 20
_RETRY_PAUSE_S = 0.02


class LinkError(EdgeExitError):
    """The server gave no usable answer in time (the device answers instead)."""


class Link:
    """POSTs to one server URL with a deadline per request (thread-safe: a persistent
    connection per thread)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, attempts: int = 3) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"server URL {url!r} is not http(s)://HOST[:PORT]/PATH")
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= 3600):
            raise InputError(f"timeout {timeout_s!r} s is out of range; expected 0 < s <= 3600")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InputError(f"attempts is {attempts!r}; expected a count >= 1")
        self.url, self.timeout_s, self.attempts = url, float(timeout_s), attempts
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path or "/"
        self._local = threading.local()

    def post(self, body: bytes) -> tuple[bytes, int]:
        """The server's answer to ``body`` and the tries it took, or a LinkError."""
        deadline = time.monotonic() + self.timeout_s
        reason = "no try was made"
        for attempt in range(1, self.attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                status, data = self._exchange("POST", body, deadline)
            except (OSError, http.client.HTTPException) as err:
                self._drop()
                reason = _why(err)
            else:
                if status == 200:
                    return data, attempt
                reason = f"server answered {status}: {_first_line(data)}"
                if 400 <= status < 500:
                    raise LinkError(reason)
            pause = min(_RETRY_PAUSE_S * attempt, deadline - time.monotonic())
            if pause > 0 and attempt < self.attempts:
                time.sleep(pause)
        if time.monotonic() >= deadline:
            reason = f"no answer within {self.timeout_s:g} s ({reason})"
        raise LinkError(reason)

    def info(self) -> dict:
        """The server's description of what it serves (GET), or a LinkError."""
        try:
            status, data = self._exchange("GET", None, time.monotonic() + self.timeout_s)
            doc = json.loads(data) if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError) as err:
            self._drop()
            raise LinkError(f"{self.url}: {_why(err)}") from None
        if not isinstance(doc, dict):
            raise LinkError(f"{self.url} answered {status}: {_first_line(data)}")
        return doc

    def _exchange(self, method: str, body: bytes | None, deadline: float) -> tuple[int, bytes]:
        """One request and its answer, each phase (connect, send, the answer's head, each
        chunk of its body) given only the time left: a socket timeout bounds one call, so
        set once it would let connect, send and receive each take the whole of it."""
        conn = self._connection()
        if conn.sock is None:
            conn.timeout = _left(deadline)
            conn.connect()
        conn.sock.settimeout(_left(deadline))  # sendall: the timeout bounds the whole send
        headers = {"Content-Type": CONTENT_TYPE} if body is not None else {}
        conn.request(method, self._path, body=body, headers=headers)
        conn.sock.settimeout(_left(deadline))
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        if length is None or not length.isdigit() or int(length) > MAX_ANSWER_BYTES:
            raise http.client.HTTPException(f"answer length {length!r} is missing or too long")
        chunks, left = [], int(length)
        while left:
            conn.sock.settimeout(_left(deadline))
            chunk = resp.read(min(left, 1 << 20))
            if not chunk:
                raise http.client.IncompleteRead(b"".join(chunks), left)
            chunks.append(chunk)
            left -= len(chunk)
        return resp.status, b"".join(chunks)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = kind(self._host, self._port, timeout=self.timeout_s)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, or TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


def _why(err: BaseException) -> str:
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _first_line(data: bytes) -> str:
    text = data[:300].decode("utf-8", "replace").strip().splitlines()
    return text[0] if text else "(no text)"
