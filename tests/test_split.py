"""Split bundles without a server: the split record, the wire, the device and server parts
joined in one process (docs/serving.md). tests/test_serve.py runs them on Ray Serve."""

from __future__ import annotations

import json
import shutil
import socket
import struct

import numpy as np
import pytest
from runtime_bundles import exported
from typer.testing import CliRunner

from edgeexit.bundle import read_manifest, write_manifest
from edgeexit.cli import app
from edgeexit.errors import BundleError, CalibrationError, InputError
from edgeexit.offload.device import SplitRuntime
from edgeexit.offload.make import split_bundle
from edgeexit.offload.tail import InProcessLink, Tail
from edgeexit.offload.wire import Expected, WireError, decode, encode
from edgeexit.runtime import Runtime
from edgeexit.split import read_split

THRESHOLDS = [0.13, 0.2, None]  # some samples leave at 0, some at 2 (seeded scores)


def split_copy(tmp_path, at=0, encoding="float32", name="digits_cnn"):
    e = exported(name)
    bundle = tmp_path / "bundle"
    shutil.copytree(e.bundle, bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["thresholds"] = THRESHOLDS[: len(doc["thresholds"]) - 1] + [None]
    (bundle / "manifest.json").write_text(json.dumps(doc))
    data = tmp_path / "data.npz"
    np.savez(data, x=e.inputs[0])
    split_bundle(bundle, at, encoding=encoding, data=None if encoding == "float32" else data)
    return bundle, e.inputs, data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(bundle) -> SplitRuntime:
    """The bundle's device side with its server in this process: no network between."""
    return SplitRuntime(bundle, server=None, link=InProcessLink(Tail(bundle)))


# -- the split record ------------------------------------------------------------------------


def test_split_records_the_carry_and_refuses_a_changed_bundle(tmp_path):
    bundle, _, _ = split_copy(tmp_path, at=1)
    split = read_split(read_manifest(bundle))
    assert split.at == 1 and split.encoding == "float32"
    assert [c.name for c in split.carry] == list(read_manifest(bundle).segments[1].carry)
    assert split.carry[0].shape[0] == "batch"
    # thresholds changed after the split (calibrate again): both sides refuse it
    m = read_manifest(bundle)
    write_manifest(bundle, m.with_thresholds([0.5, 0.5, float("inf")]))
    with pytest.raises(BundleError, match="split the bundle again"):
        SplitRuntime(bundle, server=None)
    with pytest.raises(BundleError, match="split the bundle again"):
        Tail(bundle)


def test_unsplit_bundles_and_impossible_splits_are_refused(tmp_path):
    e = exported("digits_cnn")
    with pytest.raises(BundleError, match="edgeexit split BUNDLE --at K"):
        Tail(e.bundle)
    for at in (2, -1, True, 1.0):
        with pytest.raises(InputError, match="expected 0..1"):
            split_bundle(e.bundle, at)
    with pytest.raises(InputError, match="lossy: give `data`"):
        split_bundle(e.bundle, 0, encoding="int8")
    assert "split" not in read_manifest(e.bundle).extra  # nothing written


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
def test_every_sample_gets_the_unsplit_answer(tmp_path, encoding):
    bundle, inputs, _ = split_copy(tmp_path, at=0, encoding=encoding)
    reference = Runtime(bundle).run(inputs)
    got = in_process(bundle).run(inputs)
    assert not got.degraded.any()
    assert 0 < got.offloaded.sum() < len(got.offloaded)  # some leave on the device, some not
    np.testing.assert_array_equal(got.exit_index, reference.exit_index)
    np.testing.assert_array_equal(got.predictions, reference.predictions)
    tolerance = {"float32": 1e-5, "float16": 1e-3, "int8": 2e-2}[encoding]
    np.testing.assert_allclose(got.logits, reference.logits, atol=tolerance)
    check = read_manifest(bundle).extra["split"]["check"]
    assert check["encoding"] == encoding and check["carry_bytes"] > 0
    assert check["measure"] == ("exact" if encoding == "float32" else "agreement")


def test_without_a_server_the_device_answers_degraded_from_its_last_exit(tmp_path):
    bundle, inputs, _ = split_copy(tmp_path, at=0)
    device_alone = Runtime(bundle, max_exit=0).run(inputs)
    got = SplitRuntime(bundle, server=None).run(inputs)
    assert (got.degraded == got.offloaded).all() and got.degraded.any()
    assert "no server" in got.reason
    np.testing.assert_array_equal(got.predictions, device_alone.predictions)
    assert (got.exit_index[got.degraded] == 0).all()
    doc = got.to_json()
    assert doc["offloaded"] == int(got.offloaded.sum()) and doc["degraded_reason"]


def test_a_wrong_answer_from_the_server_is_degraded_not_taken(tmp_path):
    bundle, inputs, _ = split_copy(tmp_path, at=0)
    device = in_process(bundle)
    split = device.split

    class Liar:
        def post(self, body):
            rows = decode(body, split.split_id, device.tail_expected, max_rows=999)[0].shape[0]
            logits, exits = np.zeros((rows, 10), np.float32), np.zeros(rows, np.int64)
            return encode(
                split.split_id, [("logits", logits, "raw"), ("exit_index", exits, "raw")]
            ), 1

    device.tail_expected = device.link.tail.expected
    device.link = Liar()
    got = device.run(inputs)
    assert got.degraded.any() and "exits outside 1..2" in got.reason


# -- the wire --------------------------------------------------------------------------------


def _expected(encodings=("float32", "int8")):
    return [Expected("h", np.dtype(np.float32), (2, 3), encodings),
            Expected("mask", np.dtype(np.int64), (2,), ("raw",))]  # fmt: skip


def test_the_wire_round_trips_each_encoding():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h[1] = 0  # a row of zeros: scale 0, exact
    mask = rng.integers(0, 2, (5, 2))
    for encoding, atol in (("float32", 0), ("float16", 2e-3), ("int8", 0.02)):
        body = encode("s", [("h", h, encoding), ("mask", mask, "raw")])
        got_h, got_mask = decode(body, "s", _expected((encoding,)), max_rows=5)
        np.testing.assert_allclose(got_h, h, atol=atol)
        np.testing.assert_array_equal(got_mask, mask)
        assert got_h.dtype == np.float32 and got_mask.dtype == np.int64


def _hostile_bodies():
    h, mask = np.ones((2, 2, 3), np.float32), np.ones((2, 2), np.int64)
    good = encode("s", [("h", h, "int8"), ("mask", mask, "raw")])
    size = struct.unpack_from("<I", good, 4)[0]
    head = json.loads(good[8 : 8 + size])

    def with_head(**change):
        doc = {**head, **change}
        text = json.dumps(doc).encode()
        return good[:4] + struct.pack("<I", len(text)) + text + good[8 + size :]

    bad_scale = bytearray(good)
    bad_scale[8 + size : 12 + size] = struct.pack("<f", float("nan"))
    tensors = head["tensors"]
    return {
        "empty": b"",
        "magic": b"XXXX" + good[4:],
        "header too long": good[:4] + struct.pack("<I", 1 << 30) + good[8:],
        "not json": good[:8] + b"{" * size + good[8 + size :],
        "other split": with_head(split="t"),
        "no rows": with_head(rows=0),
        "too many rows": with_head(rows=10**9),
        "rows as bool": with_head(rows=True),
        "other tensor": with_head(tensors=[{**tensors[0], "name": "x"}, tensors[1]]),
        "other dtype": with_head(tensors=[{**tensors[0], "dtype": "float64"}, tensors[1]]),
        "other shape": with_head(tensors=[{**tensors[0], "shape": [3, 2, 1]}, tensors[1]]),
        "unaccepted encoding": with_head(tensors=[tensors[0], {**tensors[1], "encoding": "int8"}]),
        "one tensor": with_head(tensors=tensors[:1]),
        "cut payload": good[:-1],
        "long payload": good + b"\0",
        "NaN scale": bytes(bad_scale),
    }


@pytest.mark.parametrize("case", list(_hostile_bodies()))
def test_hostile_messages_are_refused_before_allocating(case):
    body = _hostile_bodies()[case]
    with pytest.raises(WireError):
        decode(body, "s", _expected(), max_rows=4)


def test_a_nonfinite_carry_is_refused_by_the_server_alone(tmp_path):
    bundle, _, _ = split_copy(tmp_path, at=0)
    tail = Tail(bundle)
    spec = tail.split.carry[0]
    carry = np.zeros((2, *spec.shape[1:]), np.float32)
    carry[1, 0, 0, 0] = np.inf
    with pytest.raises(WireError, match="NaN or inf"):
        tail.decode(encode(tail.split.split_id, [(spec.name, carry, "float32")]))


# -- the command -----------------------------------------------------------------------------


def test_split_command_reports_and_refuses_in_one_line(tmp_path):
    e = exported("digits_cnn")
    bundle = tmp_path / "b"
    shutil.copytree(e.bundle, bundle)
    data = tmp_path / "d.npz"
    np.savez(data, x=e.inputs[0])
    runner = CliRunner()
    out = runner.invoke(app, ["split", str(bundle), "--at", "1", "--encoding", "int8",
                              "--data", str(data), "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["encoding"] == "int8" and doc["samples"] == len(e.inputs[0])
    assert read_split(read_manifest(bundle)).encoding == "int8"
    before = (bundle / "manifest.json").read_bytes()
    for args, code in (
        (["--at", "5"], 1),
        (["--at", "0", "--encoding", "int4"], 2),
        (["--at", "0", "--encoding", "float16"], 1),  # lossy without --data
        (["--at", "0", "--max-drop", "2"], 2),
    ):
        out = runner.invoke(app, ["split", str(bundle), *args])
        assert out.exit_code == code, (args, out.output)
        assert "Traceback" not in out.output and out.output.count("error") == 1
    assert (bundle / "manifest.json").read_bytes() == before


def test_bench_reports_the_share_of_degraded_answers(tmp_path):
    from edgeexit.measure.bench import BenchOptions, bench_bundle

    bundle, inputs, _ = split_copy(tmp_path, at=0)
    data = tmp_path / "labelled.npz"
    np.savez(data, x=inputs[0], y=np.arange(len(inputs[0])) % 10)
    down = f"http://127.0.0.1:{free_port()}/edgeexit"  # nothing listens: refused at once
    report = bench_bundle(bundle, data, BenchOptions(rounds=1, warmup_calls=0, server=down))
    assert 0 < report.offloaded < 1 and report.degraded == report.offloaded
    assert report.to_json()["degraded"] == report.degraded
    out = CliRunner().invoke(app, ["bench", str(bundle), "--data", str(data), "--rounds", "1",
                                   "--server", down, "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["degraded"] == report.degraded


# -- calibrate knows the link ----------------------------------------------------------------


def _link(at=0, encoding="float32", offload=(10.0, 15.0)):
    from edgeexit.measure.cost_profile import LatencyStats, LinkProfile

    stats = LatencyStats(median=offload[0], p95=offload[1], mean=offload[0], min=offload[0])
    rtt = LatencyStats(median=1.0, p95=2.0, mean=1.0, min=0.5)
    return LinkProfile("http://s/edgeexit", at, encoding, 4096, 30, rtt, stats, 16, stats, None)


def test_exits_on_the_server_cost_the_split_exit_plus_the_offload(tmp_path):
    from edgeexit.calibrate.costs import ExitCosts, _with_link
    from edgeexit.energy import MODELED

    bundle, _, _ = split_copy(tmp_path, at=0)
    manifest = read_manifest(bundle)
    costs = ExitCosts(latency_ms=(1.0, 5.0, 9.0), p95_latency_ms=(2.0, 6.0, 10.0),
                      energy_mj=(10.0, 50.0, 90.0), energy=MODELED, source="profile p",
                      head_ms=(0.1, 0.2, 0.0), power_w=10.0)  # fmt: skip
    linked = _with_link(costs, _link(), manifest, "p")
    assert linked.latency_ms == (1.0, 11.0, 11.0)
    assert linked.p95_latency_ms == (2.0, 17.0, 17.0)
    assert linked.energy_mj == (10.0, 10.0, 10.0)  # the device's compute stops at the split
    assert linked.head_ms == (0.1, 0.0, 0.0) and "on the server" in linked.source
    with pytest.raises(CalibrationError, match="measure the link again"):
        _with_link(costs, _link(at=1), manifest, "p")
    e = exported("digits_cnn")
    with pytest.raises(CalibrationError, match="not split"):
        _with_link(costs, _link(), read_manifest(e.bundle), "p")


def test_new_thresholds_renew_the_split(tmp_path):
    from edgeexit.split import renewed

    bundle, inputs, _ = split_copy(tmp_path, at=0)
    old = read_split(read_manifest(bundle))
    manifest = renewed(read_manifest(bundle).with_thresholds([0.5, 0.5, float("inf")]))
    write_manifest(bundle, manifest)
    new = read_split(read_manifest(bundle))
    assert new.split_id != old.split_id and (new.at, new.encoding) == (old.at, old.encoding)
    assert "when it was split" in new.check["thresholds"]
    got = in_process(bundle).run(inputs)  # both sides load it, and agree
    np.testing.assert_array_equal(got.exit_index, Runtime(bundle).run(inputs).exit_index)
    capped = read_manifest(bundle).with_extra(max_exit=0)
    with pytest.raises(InputError, match="nothing would run on the server"):
        renewed(capped)


def test_a_profile_link_is_read_back_and_checked(tmp_path):
    from edgeexit.measure.cost_profile import LinkProfile

    doc = _link().to_json()
    assert LinkProfile.from_json(json.loads(json.dumps(doc))) == _link()
    for key, bad in (("offload_ms", {"median": -1, "p95": 1, "mean": 1, "min": 1}),
                     ("at", True), ("carry_bytes", 0)):  # fmt: skip
        with pytest.raises((ValueError, KeyError)):
            LinkProfile.from_json({**doc, key: bad})


def test_a_split_runs_for_a_named_target(tmp_path):
    bundle, inputs, _ = split_copy(tmp_path, at=0)
    result = SplitRuntime(bundle, server=None, target="rpi4").run(inputs)
    assert result.energy_source == "modeled" and result.energy_mj > 0  # rpi4's power model
    assert result.local_ms > 0 and result.to_json()["local_ms"] == result.local_ms


def test_threads_sharing_a_split_runtime_each_get_their_own_answers(tmp_path):
    import threading

    bundle, inputs, _ = split_copy(tmp_path, at=0)
    reference = Runtime(bundle).run(inputs)
    device = in_process(bundle)
    wrong: list[int] = []

    def calls(k: int) -> None:
        for _ in range(10):
            got = device.run(tuple(x[k:] for x in inputs))  # each thread its own batch size
            if got.degraded.any() or not np.array_equal(got.exit_index, reference.exit_index[k:]):
                wrong.append(k)

    threads = [threading.Thread(target=calls, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
