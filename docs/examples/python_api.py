import numpy as np
import torch
from torch import nn

import edgeexit
import edgeexit.examples
from edgeexit.calibrate import Budget
from edgeexit.calibrate.pipeline import CalibrateOptions, calibrate_bundle
from edgeexit.measure.bench import bench_bundle
from edgeexit.measure.profiling import profile_bundle

# 1. any nn.Module with equal-length nn.ModuleLists `segments` and `exits` (docs/export.md)
torch.manual_seed(0)
blocks = [  # a cheap first block, then two that carry the compute: exits have time to save
    nn.Sequential(nn.Linear(8, 64), nn.ReLU()),
    nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()),
    nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU()),
]
heads = [nn.Linear(n, 4) for n in (64, 256, 256)]
model = edgeexit.MultiExit(segments=blocks, exits=heads)
x = torch.rand(3000, 8)
y = x[:, :4].argmax(dim=1).numpy()  # a toy task: which of the first four is largest
edgeexit.examples.train_multi_exit(model, x, y, epochs=20, lr=1e-2)  # all exits at once
edgeexit.save(model, "model.pt", example_inputs=(x[:4],))  # no code of yours in the file
result = edgeexit.export(model, x[:4], "bundle/", criterion="confidence")  # validated vs torch
np.savez("cal.npz", x=x.numpy()[:1500], y=y[:1500])
np.savez("test.npz", x=x.numpy()[1500:], y=y[1500:])

# 2. profile (on the device: here, the host), calibrate (host), bench (device)
profile_bundle("bundle/", "x86-cpu", repeats=50).save("x86.json")
report = calibrate_bundle(
    "bundle/", "cal.npz", Budget(max_accuracy_drop=0.01), CalibrateOptions(profile="x86.json")
)  # certified on all 1500
print(report.thresholds, report.chosen.mean_latency_ms, report.guaranteed)
bench = bench_bundle("bundle/", "test.npz")
print(bench.verdict, f"{bench.speedup:.2f}x", [c.describe() for c in bench.checks])

# 3. run (device: no torch)
rt = edgeexit.Runtime("bundle/", target="x86-cpu")
r = rt.run(x[:8].numpy())  # per-sample exits; the batch is compacted as samples leave
print(r.predictions, r.exit_index, r.latency_ms, r.energy_mj, r.energy_label)
