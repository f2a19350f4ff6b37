"""The benchmark suite compares like with like: its PyTorch early-exit loop and its oracle make
the decisions they claim, on a small bundle (benchmarks/run.py is imported, not copied)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from edgeexit import export
from edgeexit.examples import digits_resnet, load_digits
from edgeexit.runtime import Runtime

torch.set_num_threads(1)
SUITE = Path(__file__).parents[1] / "benchmarks" / "run.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_bundle(tmp_path):
    torch.manual_seed(0)
    model = digits_resnet(width=8).eval()
    x = load_digits().test.x[:40]
    bundle = export(model, torch.from_numpy(x[:4]), tmp_path / "b", validate=False).bundle_dir
    runtime = Runtime(bundle, threads=1)
    scores = runtime.run_all_exits(x).scores
    # thresholds at each exit's median score: about half the samples leave at every exit
    thresholds = [float(np.median(s)) for s in scores[:-1]] + [float("inf")]
    return model, runtime, x, thresholds


def test_torch_loop_takes_the_chains_decisions(tmp_path):
    suite = load_suite()
    model, runtime, x, thresholds = small_bundle(tmp_path)
    chain = runtime.run(x, thresholds=thresholds)
    assert 0 < (chain.exit_index == 0).sum() < len(x)  # some leave early, some do not
    eager = suite.torch_early_exit(model, thresholds, runtime.manifest.criterion)
    for batch in (1, 8):
        predictions = np.concatenate([eager(x[s : s + batch]) for s in range(0, len(x), batch)])
        np.testing.assert_array_equal(predictions, chain.predictions)


def test_oracle_leaves_at_its_exit_at_batch_1_and_64(tmp_path):
    suite = load_suite()
    _, runtime, x, _ = small_bundle(tmp_path)
    y = load_digits().test.y[:40]
    exits = suite.oracle_exits(runtime, x, y)
    every = runtime.run_all_exits(x).logits.argmax(axis=2)  # [exits, N]
    expected = every[exits, np.arange(len(x))]
    run = suite.oracle_runner(runtime, lambda start, b: exits[start : start + b])
    single = np.concatenate([run(x[s : s + 1], s) for s in range(len(x))])
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_array_equal(run(x, 0), expected)
    assert (expected == y).mean() >= (every[-1] == y).mean()  # the bound beats the final exit
