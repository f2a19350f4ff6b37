"""Per-segment latency of a cross-compiled bundle against its fp32 source, in one run.

Exports the digits ResNet once, compiles it for ``--target`` (int8 for rpi4/rpi5, fp16 for
cuda/jetson), then profiles both bundles on THIS machine under ``--run-as`` (default: the
host profile) and prints the median-latency ratio per segment. Run it on the device to see
the device's ratio; on an x86 host it says how the host's ONNX Runtime treats the QDQ graph.

    PYTHONPATH=. python benchmarks/targets_precision.py --target rpi4 --repeats 500
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import edgeexit
from edgeexit.examples import digits_resnet, load_digits, train_multi_exit
from edgeexit.measure.profiling import profile_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="rpi4")
    parser.add_argument("--run-as", default="x86-cpu", help="target profile to run both under")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = load_digits()
    model = digits_resnet(width=args.width)
    train_multi_exit(model, digits.train.x, digits.train.y, epochs=3, seed=0)
    example = torch.from_numpy(digits.train.x[:2])
    with tempfile.TemporaryDirectory() as tmp:
        calib = digits.calibration.save_npz(Path(tmp) / "calib.npz")
        fp32 = edgeexit.export(model.eval(), example, Path(tmp) / "fp32").bundle_dir
        compiled = edgeexit.export(
            model, example, Path(tmp) / args.target, target=args.target, calib_data=str(calib)
        )
        profiles = {
            name: profile_bundle(
                bundle, args.run_as, repeats=args.repeats, warmup=50, batch_size=args.batch_size
            )
            for name, bundle in (("fp32", fp32), (compiled.compiled.precision, compiled.bundle_dir))
        }
    (ref, new), names = profiles.values(), list(profiles)
    rows = [
        {
            "segment": i,
            f"{names[0]}_median_ms": a.latency_ms.median,
            f"{names[1]}_median_ms": b.latency_ms.median,
            "ratio": b.latency_ms.median / a.latency_ms.median,
        }
        for i, (a, b) in enumerate(zip(ref.segments, new.segments))
    ]
    whole = new.exit_latency_ms(len(rows) - 1) / ref.exit_latency_ms(len(rows) - 1)
    print(json.dumps({"run_as": args.run_as, "rows": rows, "whole_chain_ratio": whole}, indent=2))


if __name__ == "__main__":
    main()
