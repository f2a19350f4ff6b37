"""A split bundle on Ray Serve, on loopback: `edgeexit serve` started as a user starts it,
devices as SplitRuntimes (threads and processes), and the faults a link has: a server
stalled for 2 s, 10 % of its packets dropped (iptables, as root), the server killed.

Skipped without Ray (`pip install 'edgeexit[serve]'`); `make test` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_split import free_port, split_copy
from typer.testing import CliRunner

from edgeexit.bundle import read_manifest, write_manifest
from edgeexit.cli import app
from edgeexit.offload.device import SplitRuntime
from edgeexit.runtime import Runtime
from edgeexit.split import renewed

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

START_S = 120  # Ray's start on a loaded 2-core machine


def session_pids(sid: int) -> list[int]:
    """Every process of a session: the serve command, Ray's daemons and its actors (each
    actor in a process group of its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                pids.append(int(entry.name))
    return pids


def signal_session(sid: int, sig: int) -> None:
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Server:
    def __init__(self, bundle: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeexit", "serve", str(bundle), "--port", str(self.port),
             "--json"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
        )  # fmt: skip
        ready = self._first_line()
        self.url = json.loads(ready)["url"]

    def _first_line(self) -> str:
        """The JSON line `serve --json` prints once it serves (its log on failure)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], START_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            log = Path(self.log.name).read_text()[-2000:]
            raise AssertionError(f"edgeexit serve did not start:\n{log}")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a graceful stop: serve.shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        signal_session(self.proc.pid, signal.SIGKILL)  # whatever is left of Ray
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    bundle, inputs, _ = split_copy(tmp, at=0)
    server = Server(bundle, tmp / "serve.log")
    reference = Runtime(bundle).run(inputs)
    device_alone = Runtime(bundle, max_exit=0).run(inputs)
    yield server, bundle, inputs, reference, device_alone
    server.stop()


def assert_answers(result, reference, device_alone):
    """Each sample: the unsplit bundle's answer, or (degraded) the device's last exit's."""
    ok = ~result.degraded
    np.testing.assert_array_equal(result.exit_index[ok], reference.exit_index[ok])
    np.testing.assert_allclose(result.logits[ok], reference.logits[ok], atol=1e-5)
    np.testing.assert_array_equal(result.exit_index[~ok], 0)
    np.testing.assert_allclose(result.logits[~ok], device_alone.logits[~ok], atol=1e-5)


def test_every_sample_gets_the_unsplit_answer_through_serve(served):
    server, bundle, inputs, reference, device_alone = served
    device = SplitRuntime(bundle, server=server.url, timeout_s=30)
    result = device.run(inputs)
    assert result.offloaded.any() and not result.degraded.any(), result.reason
    assert_answers(result, reference, device_alone)
    for i in range(3):  # one sample at a time: the same answers
        one = device.run(tuple(x[i : i + 1] for x in inputs))
        assert one.exit_index[0] == reference.exit_index[i]
    info = device.link.info()
    assert info["split"] == device.split.split_id and info["exits"] == [1, 2]


def test_the_server_refuses_what_is_not_its_split(served):
    import http.client
    from urllib.parse import urlsplit

    server, *_ = served
    url = urlsplit(server.url)
    # a length beyond any request of this split: refused from the header, the body unread
    for body, length, code in ((b"garbage", 7, 400), (b"", 1 << 30, 413)):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.putrequest("POST", url.path)
        conn.putheader("Content-Length", str(length))
        conn.endheaders(body)
        answer = conn.getresponse()
        assert answer.status == code
        assert answer.read().decode().startswith("error: ")
        conn.close()


CLIENT = textwrap.dedent(
    """
    import json, sys, numpy as np
    from edgeexit.offload.device import SplitRuntime
    bundle, url, data, calls = sys.argv[1:]
    x = np.load(data)["x"]
    device = SplitRuntime(bundle, server=url, timeout_s=30)
    exits = [device.run(x) for _ in range(int(calls))]
    print(json.dumps({"exits": [r.exit_index.tolist() for r in exits],
                      "degraded": sum(int(r.degraded.sum()) for r in exits)}))
    """
)


def test_several_device_processes_share_one_deployment(served, tmp_path):
    server, bundle, inputs, reference, _ = served
    data = tmp_path / "x.npz"
    np.savez(data, x=inputs[0])
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(bundle), server.url, str(data), "8"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    for client in clients:
        out, _ = client.communicate(timeout=300)
        doc = json.loads(out)
        assert doc["degraded"] == 0
        assert all(e == reference.exit_index.tolist() for e in doc["exits"])


def test_bench_runs_the_split_as_deployed(served, tmp_path):
    from edgeexit.measure.bench import BenchOptions, bench_bundle

    server, bundle, inputs, reference, _ = served
    data = tmp_path / "labelled.npz"
    np.savez(data, x=inputs[0], y=reference.predictions)
    options = BenchOptions(rounds=2, warmup_calls=2, server=server.url, timeout_s=30)
    report = bench_bundle(bundle, data, options)
    assert report.degraded == 0 and 0 < report.offloaded < 1
    assert report.accuracy == 1.0  # the unsplit bundle's answers


def test_profile_measures_the_link_and_calibrate_plans_with_it(served, tmp_path):
    from edgeexit.budget import Budget
    from edgeexit.calibrate.pipeline import CalibrateOptions, calibrate_bundle
    from edgeexit.measure.link_probe import probe_link
    from edgeexit.offload.link import LinkError

    server, bundle, inputs, reference, _ = served
    link = probe_link(bundle, server.url, requests=5)
    assert link.rtt_ms.median > 0 and link.offload_ms.median > 0 and link.at == 0
    profile = tmp_path / "device.json"
    args = ["--repeats", "5", "--warmup", "1", "--rounds", "2", "--link", server.url]
    out = CliRunner().invoke(app, ["profile", str(bundle), *args, "-o", str(profile)])
    assert out.exit_code == 0, out.output
    assert json.loads(profile.read_text())["link"]["at"] == 0
    data = tmp_path / "labelled.npz"
    np.savez(data, x=inputs[0], y=reference.predictions)
    options = CalibrateOptions(profile=profile)
    report = calibrate_bundle(bundle, data, Budget(max_accuracy_drop=0.5), options, write=False)
    assert "on the server" in report.costs.source
    other = tmp_path / "other"  # another split: the server refuses to be measured for it
    shutil.copytree(bundle, other)
    write_manifest(other, renewed(read_manifest(other).with_thresholds([0.9, 0.9, np.inf])))
    with pytest.raises(LinkError, match="not this bundle's"):
        probe_link(other, server.url, requests=1)


def test_a_stalled_server_gets_degraded_answers_within_the_timeout(served):
    server, bundle, inputs, reference, device_alone = served
    device = SplitRuntime(bundle, server=server.url, timeout_s=0.5)
    signal_session(server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        result = device.run(inputs)
        waited = time.monotonic() - t0
        time.sleep(max(0.0, 2.0 - waited))  # a 2 s stall
    finally:
        signal_session(server.proc.pid, signal.SIGCONT)
    assert result.degraded.any() and (result.degraded == result.offloaded).all()
    assert "within 0.5 s" in result.reason
    assert waited < 2.0, waited  # answered during the stall, not after it
    assert_answers(result, reference, device_alone)
    # after the stall the server answers again
    patient = SplitRuntime(bundle, server=server.url, timeout_s=30)
    assert not patient.run(inputs).degraded.any()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables"
)
def test_ten_percent_packet_loss_costs_retries_not_answers(served):
    server, bundle, inputs, reference, device_alone = served
    rules = [
        ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(server.port)],
        ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(server.port)],
    ]
    drop = ["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"]
    added = []
    try:
        for rule in rules:
            if subprocess.run(["iptables", "-I", *rule, *drop], capture_output=True).returncode:
                pytest.skip("iptables cannot add rules here")
            added.append(rule)
        device = SplitRuntime(bundle, server=server.url, timeout_s=3.0, attempts=5)
        results = []
        for _ in range(20):
            t0 = time.monotonic()
            results.append(device.run(inputs))
            assert time.monotonic() - t0 < 3.0 + 2.0  # never blocked past the deadline
    finally:
        for rule in added:
            subprocess.run(["iptables", "-D", *rule, *drop], capture_output=True)
    for result in results:
        assert_answers(result, reference, device_alone)
    degraded = sum(int(r.degraded.sum()) for r in results)
    sent = sum(int(r.offloaded.sum()) for r in results)
    assert degraded < sent  # the loss costs retransmissions; most answers still arrive


def test_a_killed_server_gets_degraded_answers(served):
    server, bundle, inputs, reference, device_alone = served
    device = SplitRuntime(bundle, server=server.url, timeout_s=2.0)
    assert not device.run(inputs).degraded.any()
    signal_session(server.proc.pid, signal.SIGKILL)  # mid-run: the device's connection is open
    server.proc.wait(30)
    t0 = time.monotonic()
    result = device.run(inputs)
    assert time.monotonic() - t0 < 2.0 + 2.0
    assert (result.degraded == result.offloaded).all() and result.degraded.any()
    assert_answers(result, reference, device_alone)


def test_the_application_takes_replicas_or_autoscaling(tmp_path):
    from edgeexit.errors import InputError
    from edgeexit.serve import build_app, tail_app

    bundle, _, _ = split_copy(tmp_path, at=0)
    fixed = tail_app(bundle, replicas=2)
    assert fixed._bound_deployment._deployment_config.num_replicas == 2
    scaled = tail_app(bundle, replicas=1, max_replicas=4)
    config = scaled._bound_deployment._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas) == (1, 4)
    assert build_app({"bundle": str(bundle), "max_replicas": "3"}) is not None
    with pytest.raises(InputError, match="below"):
        tail_app(bundle, replicas=3, max_replicas=2)
    with pytest.raises(InputError, match="build_app takes"):
        build_app({"bundel": str(bundle)})


def test_serve_refuses_a_taken_port_in_one_line(tmp_path):
    bundle, _, _ = split_copy(tmp_path, at=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = CliRunner().invoke(app, ["serve", str(bundle), "--port", str(port)])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert f"cannot listen on 127.0.0.1:{port}" in out.output
