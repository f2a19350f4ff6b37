"""`edgeexit serve BUNDLE`: a split bundle's tail on Ray Serve, locally, in one command."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from pathlib import Path

import typer
from rich.console import Console

from edgeexit.bundle import read_manifest
from edgeexit.cli.core import command, fail
from edgeexit.errors import first_line
from edgeexit.split import read_split


def refuse_taken(host: str, port: int) -> None:
    """Refuse, before Ray starts, an address something already listens on."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise fail(
                f"cannot listen on {host}:{port}: {err.strerror or err}; pick another --port, "
                "or stop what listens there"
            ) from None


@command("serve")
def serve_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A split bundle (edgeexit split)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    route: str = typer.Option("/edgeexit", "--route", help="The URL path devices post to."),
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads per replica."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Replicas (the least, scaling)."),
    max_replicas: int = typer.Option(
        None, "--max-replicas", min=1, help="Scale up to this many replicas with the load."
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", min=1, help="Most requests Serve runs as one batch."
    ),
    batch_wait_ms: float = typer.Option(
        2.0, "--batch-wait-ms", min=0.0, help="How long a batch waits to fill."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Once serving, print {url, split} as one JSON line on stdout."
    ),
) -> None:
    """Serve a split bundle's later segments on Ray Serve, until Ctrl-C or SIGTERM.

    Starts a local Ray instance and one deployment: requests from many devices are
    batched by Serve (--max-batch, --batch-wait-ms) and replicas scale with the load
    (--replicas to --max-replicas). Devices post to http://HOST:PORT/ROUTE; a GET there
    says which split is served. Needs `pip install 'edgeexit[serve]'`. On a Ray cluster,
    run edgeexit.serve:build_app with `serve run` or a config file (docs/serving.md).

    Examples:

        edgeexit serve bundle/

        edgeexit serve bundle/ --host 0.0.0.0 --port 8000 --threads 2 --max-replicas 4
    """
    try:
        import ray
        from ray import serve

        from edgeexit.serve import tail_app
    except ImportError:
        raise fail(
            "edgeexit serve needs Ray Serve, which this install lacks: "
            "pip install 'edgeexit[serve]'"
        ) from None
    if not route.startswith("/"):
        raise fail(f"--route {route!r} must start with '/'")
    refuse_taken(host, port)
    app = tail_app(bundle, threads=threads, replicas=replicas, max_replicas=max_replicas,
                   max_batch=max_batch, batch_wait_s=batch_wait_ms / 1e3)  # fmt: skip
    console = Console(stderr=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(app, route_prefix=route, blocking=False)
        except Exception as err:  # Ray's own errors, in its words: one line, not its traceback
            raise fail(f"Ray Serve did not start: {first_line(err)}") from None
        url = f"http://{host}:{port}{route}"
        console.print(f"serving {bundle} at {url} (Ctrl-C stops)")
        if as_json:  # the one line a script waits for
            typer.echo(
                json.dumps({"url": url, "split": read_split(read_manifest(bundle)).split_id})
            )
            sys.stdout.flush()
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        console.print("stopping the server")
        serve.shutdown()
        ray.shutdown()
