"""A split bundle against the device alone and against a server doing (almost) everything,
under emulated links: end-to-end latency per sample, accuracy, shares sent and degraded.

The device is emulated on this host: one core (core 0), its CPU time capped with a CFS
quota (``--device-share``, 0.05: 1 ms of CPU per 20 ms), one ONNX Runtime thread. The
kernel enforces a quota at its scheduler ticks, so only work longer than a few ms is held
back (then about twenty times as long: a Pi-class core against this host's, for these
convolutions); shorter bursts run at this host's speed, which flatters the device alone.
The network is the demo's three-exit CNN made wide enough (``--width``) that its deep
segments are such work, trained on noisy digits, calibrated to lose at most 1 pp
(certified) and split after exit 0. The server is Ray Serve on core 1 (one replica, one
thread) with two applications: the split bundle's tail, and the same bundle with exit 0
disabled (every sample crosses after the first conv: "the server runs the whole model",
less one conv layer). Each link profile is a userspace proxy (benchmarks/linkproxy.py:
this kernel has no netem). Then the server's throughput: ``--clients`` device processes
(core 0, no cap, no link delay) calling as fast as answers come, against each tail.

    PYTHONPATH=. python benchmarks/serving_links.py --save benchmarks/results/serving_links.json

Needs root (the CFS quota) and Ray Serve (edgeexit[serve]); about 15 minutes (training).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CGROUP = Path("/sys/fs/cgroup/cpu/edgeexit-bench-device")
PAUSE_S = 0.05  # between calls: over two quota periods, so each call starts with a fresh one
PROFILES = {"20ms/10Mbit": (20.0, 10.0), "80ms/1Mbit": (80.0, 1.0)}


def build(work: Path, width: int, epochs: int, encoding: str) -> dict:
    import torch

    import edgeexit
    from edgeexit.budget import Budget
    from edgeexit.calibrate.pipeline import calibrate_bundle
    from edgeexit.examples.digits import add_noise, load_digits, noisy_copies
    from edgeexit.examples.models import digits_three_exit
    from edgeexit.export.train import train_multi_exit
    from edgeexit.offload.make import split_bundle

    clean = load_digits(seed=0, fractions=(0.5, 0.3))
    train = noisy_copies(clean.train, 2, seed=0)
    cal = add_noise(clean.calibration, seed=100).save_npz(work / "cal.npz")
    test = add_noise(clean.test, seed=200).save_npz(work / "test.npz")
    torch.manual_seed(0)
    model = digits_three_exit(width=width)
    train_multi_exit(model, train.x, train.y, epochs=epochs, lr=3e-3, seed=0)
    split = edgeexit.export(model, torch.from_numpy(train.x[:4]), work / "split").bundle_dir
    report = calibrate_bundle(split, cal, Budget(max_accuracy_drop=0.01))
    whole = work / "whole"
    shutil.copytree(split, whole)
    doc = json.loads((whole / "manifest.json").read_text())
    doc["thresholds"][0] = None  # every sample crosses after the first conv
    (whole / "manifest.json").write_text(json.dumps(doc))
    for bundle in (split, whole):
        split_bundle(bundle, 0, encoding=encoding, data=cal)
    return {
        "split": str(split),
        "whole": str(whole),
        "cal": str(cal),
        "test": str(test),
        "thresholds": list(report.thresholds),
    }


def serve_role(split: str, whole: str, port: int) -> None:
    """The server process (pinned to core 1 by its parent): both tails on one Ray Serve."""
    import ray
    from ray import serve

    from edgeexit.serve import tail_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(tail_app(split, threads=1), name="split", route_prefix="/split")
    serve.run(tail_app(whole, threads=1), name="whole", route_prefix="/whole")
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    serve.shutdown()
    ray.shutdown()


def device_role(config: str) -> None:
    """The device process: core 0, a CFS quota, one thread; every setup per sample in turn."""
    c = json.loads(config)
    os.sched_setaffinity(0, {0})
    if c["share"] < 1:
        (CGROUP / "cgroup.procs").write_text(str(os.getpid()))
        assert CGROUP.name in Path("/proc/self/cgroup").read_text(), "not in the device's cgroup"
    from edgeexit.data import load_data
    from edgeexit.energy import NoMeter
    from edgeexit.offload.device import SplitRuntime
    from edgeexit.runtime import Runtime

    alone = Runtime(c["split"], threads=1, meter=NoMeter())
    setups = {"device alone": alone}
    for name, url in c["urls"].items():
        bundle = c["whole"] if name.startswith("server") else c["split"]
        setups[name] = SplitRuntime(bundle, server=url, timeout_s=5.0, threads=1,
                                    meter=NoMeter())  # fmt: skip
    data = load_data(c["test"], alone.manifest.inputs)
    n = min(c["samples"], len(data))
    x = data.inputs[0][:n]
    for setup in setups.values():  # warm up every path
        for i in range(5):
            setup.run(x[i : i + 1])
    names = list(setups)
    out = {name: {"ms": [], "pred": [], "exit": [], "sent": [], "degraded": []} for name in names}
    for i in range(n):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]  # each setup first in turn: drift hits all
            t0 = time.perf_counter()
            result = setups[name].run(x[i : i + 1])
            ms = (time.perf_counter() - t0) * 1e3
            rec = out[name]
            rec["ms"].append(ms)
            rec["pred"].append(int(result.predictions[0]))
            rec["exit"].append(int(result.exit_index[0]))
            rec["sent"].append(bool(getattr(result, "offloaded", [False])[0]))
            rec["degraded"].append(bool(getattr(result, "degraded", [False])[0]))
            # a call that used up the device's quota must not hold back the next setup's
            time.sleep(PAUSE_S)
    if c["share"] < 1:  # proof that the cap bit: how often the device was held back
        stat = dict(line.split() for line in (CGROUP / "cpu.stat").read_text().splitlines())
        out["throttled"] = {k: int(stat[k]) for k in ("nr_periods", "nr_throttled")}
    print(json.dumps(out))


def client_role(config: str) -> None:
    """One of several devices (core 0, no cap, no link delay) calling as fast as answers
    come, for ``seconds``: what the one-core server sustains, not what a device waits."""
    c = json.loads(config)
    os.sched_setaffinity(0, {0})
    from edgeexit.data import load_data
    from edgeexit.energy import NoMeter
    from edgeexit.offload.device import SplitRuntime

    device = SplitRuntime(c["bundle"], server=c["url"], timeout_s=10.0, threads=1,
                          meter=NoMeter())  # fmt: skip
    x = load_data(c["test"], device.manifest.inputs).inputs[0]
    calls = sent = degraded = 0
    end = time.monotonic() + c["seconds"]
    while time.monotonic() < end:
        result = device.run(x[calls % len(x) : calls % len(x) + 1])
        calls += 1
        sent += int(result.offloaded[0])
        degraded += int(result.degraded[0])
    print(json.dumps({"calls": calls, "sent": sent, "degraded": degraded}))


def throughput(built: dict, port: int, clients: int, seconds: float) -> dict:
    """Each tail served to ``clients`` device processes at once, straight to the server."""
    found = {}
    for route, bundle in (("/split", built["split"]), ("/whole", built["whole"])):
        config = {"bundle": bundle, "url": f"http://127.0.0.1:{port}{route}",
                  "test": built["test"], "seconds": seconds}  # fmt: skip
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--client-role", json.dumps(config)],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(clients)
        ]
        counts = [json.loads(p.communicate(timeout=seconds + 120)[0].splitlines()[-1])
                  for p in procs]  # fmt: skip
        total = {k: sum(c[k] for c in counts) for k in ("calls", "sent", "degraded")}
        found[route.strip("/")] = {
            **total,
            "device_samples_per_s": total["calls"] / seconds,
            "server_samples_per_s": total["sent"] / seconds,
        }
    return found


def summarise(runs: dict, labels: np.ndarray, full_accuracy: float, budget_ms: float) -> dict:
    rows = {}
    for name, rec in runs.items():
        ms = np.array(rec["ms"])
        y = labels[: len(ms)]
        rows[name] = {
            "accuracy": float((np.array(rec["pred"]) == y).mean()),
            "mean_ms": float(ms.mean()),
            "median_ms": float(np.median(ms)),
            "p95_ms": float(np.quantile(ms, 0.95)),
            "sent": float(np.mean(rec["sent"])),
            "degraded": float(np.mean(rec["degraded"])),
            "exit_counts": np.bincount(rec["exit"], minlength=3).tolist(),
            "median_ms_by_exit": {
                int(e): float(np.median(ms[np.array(rec["exit"]) == e])) for e in set(rec["exit"])
            },
            "p95_budget_met": bool(np.quantile(ms, 0.95) <= budget_ms),
            "accuracy_drop_pp": 100 * (full_accuracy - float((np.array(rec["pred"]) == y).mean())),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--encoding", default="float16")
    parser.add_argument("--device-share", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=360)
    parser.add_argument("--p95-budget-ms", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=Path("build/serving-bench"))
    parser.add_argument("--save", type=Path)
    parser.add_argument("--reuse", action="store_true", help="the model --work already holds")
    parser.add_argument("--serve-role", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--device-role", help=argparse.SUPPRESS)
    parser.add_argument("--client-role", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=4, help="devices at once (0: skip)")
    parser.add_argument("--throughput-s", type=float, default=15.0)
    args = parser.parse_args()
    if args.serve_role:
        return serve_role(args.serve_role[0], args.serve_role[1], int(args.serve_role[2]))
    if args.device_role:
        return device_role(args.device_role)
    if args.client_role:
        return client_role(args.client_role)
    from linkproxy import LinkProxy

    os.sched_setaffinity(0, {1})  # the proxies: beside the server, off the device's core

    from edgeexit.data import load_data
    from edgeexit.energy import NoMeter
    from edgeexit.runtime import Runtime

    built_json = args.work / "built.json"
    if args.reuse and built_json.exists():
        built = json.loads(built_json.read_text())
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        print("training, exporting, calibrating, splitting", file=sys.stderr)
        built = build(args.work, args.width, args.epochs, args.encoding)
        built_json.write_text(json.dumps(built))
    if args.device_share < 1:
        CGROUP.mkdir(exist_ok=True)
        # the shortest quota the kernel takes (1 ms) over a period of 1 ms / share: a burst of
        # work longer than 1 ms takes 1 / share times as long
        (CGROUP / "cpu.cfs_period_us").write_text(str(int(1000 / args.device_share)))
        (CGROUP / "cpu.cfs_quota_us").write_text("1000")
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, __file__, "--serve-role", built["split"],
         built["whole"], str(port)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert server.stdout.readline().strip() == "ready", "the server did not start"
        urls = {}
        for name, (rtt, mbit) in PROFILES.items():
            for route, label in (("/split", "split"), ("/whole", "server (all but conv 1)")):
                proxy = LinkProxy(("127.0.0.1", port), rtt, mbit)
                urls[f"{label} @ {name}"] = proxy.url(route)
        config = {**built, "urls": urls, "share": args.device_share, "samples": args.samples}
        print("measuring on the emulated device", file=sys.stderr)
        out = subprocess.run([sys.executable, __file__, "--device-role", json.dumps(config)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        load = None
        if args.clients:
            print(f"{args.clients} devices at once", file=sys.stderr)
            load = throughput(built, port, args.clients, args.throughput_s)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        time.sleep(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        if CGROUP.exists():
            with contextlib.suppress(OSError):
                CGROUP.rmdir()
    runs = json.loads(out.strip().splitlines()[-1])
    throttled = runs.pop("throttled", None)
    full = Runtime(built["split"], thresholds=(np.inf,) * 3, meter=NoMeter())
    data = load_data(built["test"], full.manifest.inputs)
    n = min(args.samples, len(data))
    full_accuracy = float((full.run(data.inputs[0][:n]).predictions == data.labels[:n]).mean())
    rows = summarise(runs, data.labels, full_accuracy, args.p95_budget_ms)
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{os.cpu_count()} cores; device: core 0 at {args.device_share:.0%} "
        "(CFS quota), 1 thread; server: Ray Serve on core 1, 1 replica, 1 thread",
        "width": args.width,
        "encoding": args.encoding,
        "samples": n,
        "full_model_accuracy": full_accuracy,
        "p95_budget_ms": args.p95_budget_ms,
        "setups": rows,
        "device_throttled": throttled,
        "throughput": load,
        "throughput_note": f"{args.clients} device processes on core 0 (no cap, no link delay) "
        "calling one sample at a time as fast as answers come; the server on core 1",
    }
    print(f"full model accuracy {full_accuracy:.2%}; p95 budget {args.p95_budget_ms} ms")
    print(f"{'setup':34} {'acc':>7} {'drop pp':>8} {'mean':>7} {'p95':>7} {'sent':>6} {'degr':>5}")
    for name, r in rows.items():
        print(f"{name:34} {r['accuracy']:7.2%} {r['accuracy_drop_pp']:8.2f} {r['mean_ms']:7.1f} "
              f"{r['p95_ms']:7.1f} {r['sent']:6.1%} {r['degraded']:5.1%}")  # fmt: skip
    for name, t in (load or {}).items():
        print(f"{args.clients} devices on {name}: {t['device_samples_per_s']:.0f} samples/s "
              f"answered, {t['server_samples_per_s']:.0f}/s by the server, "
              f"{t['degraded']} degraded")  # fmt: skip
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
