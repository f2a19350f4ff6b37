"""A split bundle's server: its tail as a Ray Serve deployment (``edgeexit[serve]``).

Ray Serve does the serving: HTTP, a queue per replica, batching requests from many devices
into one call (``serve.batch``), and replicas scaled with the load (autoscaling). edgeexit
adds only what a request means (``offload.tail.Tail``: checked, run, answered). Locally,
``edgeexit serve BUNDLE`` starts Ray and the deployment in one command; on a cluster, Serve
runs ``edgeexit.serve:build_app`` from a config file (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from edgeexit.errors import InputError
from edgeexit.offload.tail import Tail
from edgeexit.offload.wire import CONTENT_TYPE, WireError

DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_S = 0.002


@serve.deployment(name="edgeexit-tail", max_ongoing_requests=64)
class TailDeployment:
    """One replica: the tail's ONNX Runtime sessions, fed batches Serve gathers."""

    def __init__(self, bundle: str, threads: int | None, max_batch: int, batch_wait_s: float):
        self.tail = Tail(bundle, threads=threads)
        self.run_batch.set_max_batch_size(max_batch)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def run_batch(self, requests: list[tuple]) -> list[bytes]:
        # in a thread: the replica's event loop keeps gathering the next batch meanwhile
        return await asyncio.to_thread(self.tail.run, requests)

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.tail.info())
        if request.method != "POST":
            return PlainTextResponse(
                f"error: {request.method} is not served here; expected GET or POST\n",
                status_code=405,
            )
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > self.tail.max_body_bytes:
            return PlainTextResponse(
                f"error: request length {length or 'missing'}; expected at most "
                f"{self.tail.max_body_bytes} bytes\n",
                status_code=413,
            )
        try:
            carry = self.tail.decode(await request.body())
        except WireError as err:
            return PlainTextResponse(f"error: {err}\n", status_code=400)
        return Response(await self.run_batch(carry), media_type=CONTENT_TYPE)


def tail_app(
    bundle: str | os.PathLike,
    *,
    threads: int | None = 1,
    replicas: int = 1,
    max_replicas: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
) -> serve.Application:
    """The deployment bound to ``bundle``: ``replicas`` of it, or between ``replicas`` and
    ``max_replicas`` scaled by Serve with the requests in flight."""
    Tail(bundle, threads=threads)  # a bundle that is no split fails here, not in a replica
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": threads or 1}}
    if max_replicas is None:
        options["num_replicas"] = replicas
    else:
        if max_replicas < replicas:
            raise InputError(f"`max_replicas` {max_replicas} is below `replicas` {replicas}")
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": 2 * max_batch,
        }
    deployment = TailDeployment.options(**options)
    return deployment.bind(str(os.path.abspath(bundle)), threads, max_batch, batch_wait_s)


def build_app(args: dict[str, Any]) -> serve.Application:
    """For ``serve run edgeexit.serve:build_app bundle=PATH [threads=N max_replicas=M]`` and
    Serve config files: the same application as ``edgeexit serve``."""
    known = {"bundle", "threads", "replicas", "max_replicas", "max_batch", "batch_wait_s"}
    unknown = sorted(set(args) - known)
    if unknown or "bundle" not in args:
        raise InputError(f"build_app takes bundle= and {sorted(known - {'bundle'})}; got {args}")
    ints = {
        k: int(args[k]) for k in ("threads", "replicas", "max_replicas", "max_batch") if k in args
    }
    wait = {"batch_wait_s": float(args["batch_wait_s"])} if "batch_wait_s" in args else {}
    return tail_app(args["bundle"], **ints, **wait)
