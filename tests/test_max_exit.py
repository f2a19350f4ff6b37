"""A depth cap (DeeR-VLA's peak budget): every sample leaves by exit K, and the segments
after it are never opened, so a device does not spend their memory."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.errors import InputError  # noqa: E402
from edgeexit.examples import digits_resnet  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("cap") / "bundle"
    edgeexit.export(digits_resnet(width=4).eval(), torch.rand(2, 1, 8, 8), out)
    return out


def test_capped_runs_are_the_full_chain_forced_out_at_the_cap(bundle):
    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    full = edgeexit.Runtime(bundle, threads=1)
    every = full.run_all_exits(x)
    for k in range(full.num_exits):
        capped = edgeexit.Runtime(bundle, threads=1, max_exit=k)
        out = capped.run(x)
        assert capped.num_exits == k + 1 and set(out.exit_index.tolist()) == {k}
        np.testing.assert_allclose(out.logits, every.logits[k], atol=1e-6)


def test_segments_after_the_cap_are_never_opened(bundle, tmp_path):
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in bundle.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    last = edgeexit.Runtime(copy, threads=1).manifest.segments[-1].file
    (copy / last).unlink()  # a device that never copied the deep segments
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    assert edgeexit.Runtime(copy, threads=1, max_exit=1).run(x).exit_index.tolist() == [1, 1]
    with pytest.raises(edgeexit.EdgeExitError, match="missing"):
        edgeexit.Runtime(copy, threads=1)
    with pytest.raises(InputError, match="`max_exit` is 9; expected 0..3"):
        edgeexit.Runtime(bundle, max_exit=9)


def test_the_run_command_takes_the_cap(bundle, tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeexit.cli import app

    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))
    ok = CliRunner().invoke(app, ["run", str(bundle), "-i", str(tmp_path / "x.npy"),
                                  "--max-exit", "0", "--json"])  # fmt: skip
    assert ok.exit_code == 0 and json.loads(ok.stdout)["exit_index"] == [0, 0, 0]
    bad = CliRunner().invoke(app, ["run", str(bundle), "-i", str(tmp_path / "x.npy"),
                                   "--max-exit", "7"])  # fmt: skip
    assert bad.exit_code == 1 and "--max-exit is 7" in bad.stderr


def test_calibrate_caps_the_depth_and_the_device_keeps_the_cap(bundle, tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeexit.cli import app

    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in bundle.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    rng = np.random.default_rng(1)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    y = edgeexit.Runtime(copy, threads=1).run(x).predictions  # labels: the full model's own
    np.savez(tmp_path / "cal.npz", x=x, y=y)
    result = CliRunner().invoke(app, ["calibrate", str(copy), "--data", str(tmp_path / "cal.npz"),
                                      "--risk", "0.5", "--max-exit", "1", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((copy / "manifest.json").read_text())
    assert doc["max_exit"] == 1 and doc["thresholds"][2:] == [None, None]
    (copy / doc["segments"][3]["file"]).unlink()  # beyond the cap: the device never needs it
    runtime = edgeexit.Runtime(copy, threads=1)
    assert runtime.num_exits == 2 and max(runtime.run(x).exit_index) <= 1
    bench = CliRunner().invoke(app, ["bench", str(copy), "--data", str(tmp_path / "cal.npz"),
                                     "--rounds", "1", "--json"])  # fmt: skip
    assert bench.exit_code == 0, bench.output
    assert len(json.loads(bench.stdout)["exit_counts"]) == 2


def test_profile_records_resident_memory_and_calibrate_caps_to_a_memory_budget(bundle, tmp_path):
    import json
    import sys

    from typer.testing import CliRunner

    from edgeexit.cli import app
    from edgeexit.measure.profiling import profile_bundle

    profile = profile_bundle(bundle, repeats=2, warmup=0, rounds=2, min_seconds=0.0)
    resident = [s.resident_mb for s in profile.segments]
    if sys.platform.startswith("linux"):
        assert all(r is not None and r >= 0 for r in resident)
    doc = profile.to_json()
    for s in doc["segments"]:
        s["resident_mb"] = 10.0  # known figures: the cap follows from them alone
    (tmp_path / "p.json").write_text(json.dumps(doc))
    x = np.random.default_rng(2).random((40, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "cal.npz", x=x, y=edgeexit.Runtime(bundle).run(x).predictions)
    base = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"), "--risk", "0.5",
            "--dry-run", "--json"]  # fmt: skip
    ok = CliRunner().invoke(app, [*base, "--profile", str(tmp_path / "p.json"),
                                  "--target-memory", "25MB"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert len(json.loads(ok.stdout)["expected"]["thresholds"]) == 2  # segments 0, 1: 20 MB
    assert "exit 1: its resident memory is 20 MB" in json.loads(ok.stdout)["depth_cap"]
    small = CliRunner().invoke(app, [*base, "--profile", str(tmp_path / "p.json"),
                                     "--target-memory", "5MB"])  # fmt: skip
    assert small.exit_code == 1 and "exit 0 alone takes 10 MB" in small.stderr
    blind = CliRunner().invoke(app, [*base, "--target-memory", "5MB"])
    assert blind.exit_code == 1 and "--target-memory needs" in blind.stderr
    assert "pass a --profile" in blind.stderr


def test_calibrate_caps_the_depth_to_a_peak_latency_budget(bundle, tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeexit.cli import app
    from edgeexit.measure.profiling import profile_bundle

    doc = profile_bundle(bundle, repeats=2, warmup=0, rounds=2, min_seconds=0.0).to_json()
    for i, e in enumerate(doc["exits"]):  # known figures: exit i's calls take i + 1 ms
        e["latency_ms"] = {k: float(i + 1) for k in e["latency_ms"]} | {"spread": 0.0}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    x = np.random.default_rng(2).random((40, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "cal.npz", x=x, y=edgeexit.Runtime(bundle).run(x).predictions)
    base = ["calibrate", str(bundle), "--data", str(tmp_path / "cal.npz"), "--risk", "0.5",
            "--profile", str(tmp_path / "p.json"), "--dry-run", "--json"]  # fmt: skip
    capped = CliRunner().invoke(app, [*base, "--target-max-latency", "2.5ms"])
    assert capped.exit_code == 0, capped.output
    out = json.loads(capped.stdout)
    assert len(out["expected"]["thresholds"]) == 2  # exits 0 and 1: 1 ms and 2 ms
    assert "p95 latency of a call is 2 ms" in out["depth_cap"]
    both = CliRunner().invoke(app, [*base, "--target-max-latency", "9ms", "--max-exit", "0"])
    assert both.exit_code == 0, both.output
    assert json.loads(both.stdout)["depth_cap"].startswith("every sample leaves by exit 0")
    free = CliRunner().invoke(app, [*base, "--target-max-latency", "9ms"])
    assert "depth_cap" not in json.loads(free.stdout)  # every exit fits: no cap
    tight = CliRunner().invoke(app, [*base, "--target-max-latency", "0.5ms"])
    assert tight.exit_code == 1 and "exit 0 alone takes 1 ms" in tight.stderr
    assert "--target-max-latency budget is 0.5 ms" in tight.stderr
