"""Disabled exits cost nothing: while an exit's threshold is "never", the runtime runs its
segment's body (the block without the head), and while every early exit is, the plain
graph (the bodies and the last segment joined: one call). Every answer equals the chain
with every head, whatever the thresholds of a call."""

from __future__ import annotations

import contextlib
import json
import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.bundle import read_manifest  # noqa: E402
from edgeexit.errors import BundleError, InputError  # noqa: E402
from edgeexit.examples.models import digits_resnet  # noqa: E402

INF = math.inf


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A digits ResNet bundle as exported, and a copy whose manifest lists no bodies."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bodies")
    edgeexit.export(digits_resnet(width=8).eval(), torch.rand(2, 1, 8, 8), root / "bundle")
    heads = shutil.copytree(root / "bundle", root / "heads")
    doc = json.loads((heads / "manifest.json").read_text())
    for segment in doc["segments"]:
        segment.pop("body", None)
        segment.pop("plain", None)
    (heads / "manifest.json").write_text(json.dumps(doc))
    return root / "bundle", heads


def samples(n=24):
    return np.random.default_rng(1).random((n, 1, 8, 8), dtype=np.float32)


def test_export_writes_a_body_for_every_exit_but_the_last(bundles):
    bundle, _ = bundles
    manifest = read_manifest(bundle)
    bodies = [s.body for s in manifest.segments]
    assert all(b is not None for b in bodies[:-1]) and bodies[-1] is None
    assert all((bundle / b.file).is_file() for b in bodies[:-1])
    runtime = edgeexit.Runtime(bundle, threads=1)
    assert runtime._headless == {0, 1, 2}  # as exported, no early exit can fire
    outputs = [{o.name for o in s.get_outputs()} for s in runtime.sessions]
    assert all(not any(n.startswith("score") for n in names) for names in outputs[:-1])


@pytest.mark.parametrize(
    "thresholds", [None, (INF, INF, INF, INF), (0.3, INF, 0.2, INF), (0.0, 0.0, 0.0, 0.0)]
)
def test_answers_equal_the_chain_with_every_head(bundles, thresholds):
    bundle, heads = bundles
    bodies, every = edgeexit.Runtime(bundle, threads=1), edgeexit.Runtime(heads, threads=1)
    x = samples()
    kwargs = {} if thresholds is None else {"thresholds": thresholds}
    for batch in (x, x[:1]):
        got, want = bodies.run(batch, **kwargs), every.run(batch, **kwargs)
        np.testing.assert_array_equal(got.exit_index, want.exit_index)
        np.testing.assert_array_equal(got.logits, want.logits)
    all_exits = bodies.run_all_exits(x)
    np.testing.assert_array_equal(all_exits.logits, every.run_all_exits(x).logits)
    carry, logits, score = bodies.run_segment(0, [x])
    assert logits.shape == (len(x), 10) and score.shape == (len(x),)


def test_calibrated_thresholds_keep_the_bodies_of_the_exits_they_disable(bundles, tmp_path):
    bundle, _ = bundles
    copy = shutil.copytree(bundle, tmp_path / "b")
    manifest = read_manifest(copy)
    from edgeexit.bundle import write_manifest

    write_manifest(copy, manifest.with_thresholds((0.5, INF, 0.4, INF)))
    runtime = edgeexit.Runtime(copy, threads=1)
    assert runtime.bodies_in_use == {1}
    assert runtime.run(samples()).exit_index.max() <= 3
    write_manifest(copy, manifest.with_thresholds((INF, 0.5, INF, INF)))
    runtime = edgeexit.Runtime(copy, threads=1)
    assert runtime.bodies_in_use == {0, 2}
    every = edgeexit.Runtime(bundles[1], threads=1)
    for thresholds in [(0.2, 0.3, 0.1, INF), (INF, 0.5, INF, INF)]:  # heads opened, in order
        got, want = runtime.run(samples(), thresholds=thresholds), every.run(
            samples(), thresholds=thresholds)  # fmt: skip
        np.testing.assert_array_equal(got.logits, want.logits)


def _calibrated(bundle, tmp_path, thresholds):
    from edgeexit.bundle import write_manifest

    copy = shutil.copytree(bundle, tmp_path / f"calibrated_{len(list(tmp_path.iterdir()))}")
    write_manifest(copy, read_manifest(copy).with_thresholds(thresholds))
    return edgeexit.Runtime(copy, threads=1)


def test_export_writes_a_prefix_graph_for_every_segment_between_the_first_and_the_last(bundles):
    segments = read_manifest(bundles[0]).segments
    assert [s.prefix is not None for s in segments] == [False, True, True, False]
    assert [s.prefix.file for s in segments[1:3]] == ["prefix_01.onnx", "prefix_02.onnx"]


@pytest.mark.parametrize("first", [1, 2])
def test_a_prefix_graph_runs_the_disabled_exits_before_the_first_enabled_one(
    bundles, tmp_path, first
):
    """Every exit before ``first`` disabled: its prefix graph (their bodies and its segment,
    one graph) starts the chain, and every answer is the chain with every head's, whatever
    the thresholds of a call, in a batch and alone."""
    bundle, heads = bundles
    every = edgeexit.Runtime(heads, threads=1)
    x = samples()
    medians = [float(np.median(s)) for s in every.run_all_exits(x).scores]
    thresholds = tuple(medians[i] if i == first else INF for i in range(4))
    runtime = _calibrated(bundle, tmp_path, thresholds)
    assert runtime.prefix_exit == first and not runtime.runs_plain_graph
    assert len(runtime.sessions) == 4 - first and runtime._chain.sums_inputs
    calls = [None, thresholds, (medians[0], *thresholds[1:]), (INF,) * 4, (0.0,) * 4,
             (INF, INF, medians[2], INF)]  # fmt: skip
    for batch in (x, x[:1], x[5:6]):
        for call in calls:
            kwargs = {} if call is None else {"thresholds": call}
            got, want = (
                runtime.run(batch, **kwargs),
                every.run(batch, thresholds=call or thresholds),
            )
            np.testing.assert_array_equal(got.exit_index, want.exit_index)
            np.testing.assert_allclose(got.logits, want.logits, atol=1e-6)
            assert len(got.segment_ms) == 4
    exits = runtime.run(x).exit_index
    assert set(exits.tolist()) == {first, 3}
    segment_ms = runtime.run(x[:1]).segment_ms
    assert all(math.isnan(ms) for ms in segment_ms[:first]) and segment_ms[first] > 0
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"rows 3\)"):
        runtime.run(bad)


def test_every_listed_graph_is_checked_at_load_whatever_runs(bundles, tmp_path):
    """A changed prefix graph fails the load of a bundle that runs its plain graph, and a
    changed plain graph that of one whose thresholds run a prefix."""
    bundle, _ = bundles
    for name, thresholds in (
        ("prefix_02.onnx", (INF,) * 4),
        ("plain_03.onnx", (INF, 0.5, INF, INF)),
    ):
        copy = shutil.copytree(bundle, tmp_path / name)
        from edgeexit.bundle import write_manifest

        write_manifest(copy, read_manifest(copy).with_thresholds(thresholds))
        with open(copy / name, "ab") as f:
            f.write(b"\0")
        with pytest.raises(BundleError, match=f"{name} does not match its sha256"):
            edgeexit.Runtime(copy, threads=1)


def test_a_prefix_graph_without_the_segments_outputs_is_refused_when_it_runs(bundles, tmp_path):
    """A prefix graph stands for its segment: one that does not give the segment's score
    fails the load of a bundle whose thresholds run it, naming the file and the output."""
    from edgeexit.bundle import write_manifest

    def drop_score(graph):
        kept = [o for o in graph.output if o.name != "score_1"]
        del graph.output[:]
        graph.output.extend(kept)

    copy = _with_graphs_edited(bundles[0], tmp_path, drop_score,
                               lambda doc: [doc["segments"][1]["prefix"]])  # fmt: skip
    write_manifest(copy, read_manifest(copy).with_thresholds((INF, 0.5, INF, INF)))
    with pytest.raises(BundleError, match="prefix_01.onnx has no output 'score_1'"):
        edgeexit.Runtime(copy, threads=1)


@pytest.mark.parametrize("where", [0, -1])
def test_a_prefix_on_the_first_or_the_last_segment_is_refused(bundles, tmp_path, where):
    copy = shutil.copytree(bundles[0], tmp_path / "b")
    doc = json.loads((copy / "manifest.json").read_text())
    doc["segments"][where]["prefix"] = doc["segments"][1]["prefix"]
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"segments\[[03]\] has a prefix"):
        edgeexit.Runtime(copy, threads=1)


def test_a_depth_cap_runs_its_last_segment_with_the_head(bundles):
    bundle, heads = bundles
    capped = edgeexit.Runtime(bundle, threads=1, max_exit=1)
    assert capped._headless == {0}
    want = edgeexit.Runtime(heads, threads=1, max_exit=1).run(samples())
    np.testing.assert_array_equal(capped.run(samples()).logits, want.logits)


def test_patience_exports_no_bodies(tmp_path):
    torch.manual_seed(0)
    model = digits_resnet(width=8).eval()
    edgeexit.export(model, torch.rand(2, 1, 8, 8), tmp_path / "b", criterion="patience")
    segments = read_manifest(tmp_path / "b").segments
    assert all(s.body is None and s.plain is None for s in segments)


def test_a_changed_body_is_refused_and_a_body_on_the_last_exit_too(bundles, tmp_path):
    bundle, _ = bundles
    copy = shutil.copytree(bundle, tmp_path / "b")
    with open(copy / "body_00.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="body_00.onnx does not match its sha256"):
        edgeexit.Runtime(copy)
    shutil.copy(bundle / "body_00.onnx", copy / "body_00.onnx")
    runtime = edgeexit.Runtime(copy, threads=1)  # the heads, not opened yet, are checked again
    with open(copy / "segment_00.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="segment_00.onnx does not match its sha256"):
        runtime.run(samples(), thresholds=(0.5, INF, INF, INF))
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["segments"][-1]["body"] = doc["segments"][0]["body"]
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="last segment has a body"):
        edgeexit.Runtime(copy)


@pytest.mark.parametrize("ort_format", [False, True], ids=["onnx", "ort-format"])
def test_compiled_bodies_hand_on_what_their_compiled_segments_do(bundles, tmp_path, ort_format):
    from edgeexit.compile.compiler import CompileOptions, compile_bundle
    from edgeexit.data import Dataset

    bundle, _ = bundles
    calib = Dataset((samples(64),), None)
    options = CompileOptions(threads=1, max_quant_drop=1.0, ort_format=ort_format)
    compile_bundle(bundle, tmp_path / "int8", "rpi5", calib=calib, options=options)
    manifest = read_manifest(tmp_path / "int8")
    kept = [s.body for s in manifest.segments[:-1] if s.body is not None]
    assert kept, "no compiled body matched its compiled segment"
    assert all((tmp_path / "int8" / b.file).is_file() for b in kept)
    deployed = edgeexit.Runtime(tmp_path / "int8", threads=1)
    every = edgeexit.Runtime(tmp_path / "int8", threads=1, bodies=False)
    assert deployed.bodies_in_use and not every.bodies_in_use
    np.testing.assert_allclose(deployed.run(samples()).logits, every.run(samples()).logits,
                               atol=1e-4)  # fmt: skip
    # the plain graph is the compiled bodies and last segment, joined, where all were kept
    plain = manifest.segments[-1].plain
    assert (plain is not None) == (len(kept) == len(manifest.segments) - 1)
    assert deployed.runs_plain_graph == (plain is not None)
    # a prefix is the compiled bodies before it and its compiled segment, joined, likewise
    prefixes = [s.prefix for s in manifest.segments]
    for k in (1, 2):
        assert (prefixes[k] is not None) == all(s.body is not None for s in manifest.segments[:k])
    if prefixes[1] is not None:
        assert prefixes[1].file.endswith(".ort" if ort_format else ".onnx")
        thresholds = (INF, 0.2, INF, INF)
        prefixed = _calibrated(tmp_path / "int8", tmp_path, thresholds)
        assert prefixed.prefix_exit == 1
        np.testing.assert_allclose(prefixed.run(samples()).logits,
                                   every.run(samples(), thresholds=thresholds).logits,
                                   atol=1e-4)  # fmt: skip
    # segment 0 and its body sum the inputs too, added after converting: float32, and
    # NaN still NaN (not saturated by the int8 input's QuantizeLinear)
    assert every._chain.sums_inputs
    x = samples(3)
    x[2, 0, 1, 1] = np.inf
    for rt in (deployed, every):
        with pytest.raises(InputError, match=r"rows 2\)"):
            rt.run(x, thresholds=(0.1, INF, INF, INF))
    if plain is not None:
        assert plain.file.endswith(".ort" if ort_format else ".onnx")
        # the sum was added after converting: it stays float32 and still refuses NaN
        assert deployed._chain.sums_inputs
        x = samples(3)
        deployed.run(x)
        x[1, 0, 2, 2] = np.nan
        with pytest.raises(InputError, match=r"rows 1\)"):
            deployed.run(x)
        thresholds = (0.1, INF, INF, INF)
        np.testing.assert_allclose(deployed.run(samples(), thresholds=thresholds).logits,
                                   every.run(samples(), thresholds=thresholds).logits,
                                   atol=1e-4)  # fmt: skip


def test_compile_writes_the_plain_graph_on_the_last_segment_only(bundles, tmp_path):
    """The format allows a plain graph on any segment, and compile joins the last one's:
    one named on another segment is dropped, not replaced by the last exit's graph."""
    from edgeexit.compile.compiler import CompileOptions, compile_bundle

    bundle, _ = bundles
    copy = shutil.copytree(bundle, tmp_path / "b")
    doc = json.loads((copy / "manifest.json").read_text())
    doc["segments"][1]["plain"] = doc["segments"][-1]["plain"]
    (copy / "manifest.json").write_text(json.dumps(doc))
    compile_bundle(copy, tmp_path / "compiled", "x86-cpu",
                   options=CompileOptions(threads=1))  # fmt: skip
    segments = read_manifest(tmp_path / "compiled").segments
    assert segments[1].plain is None and segments[-1].plain is not None
    assert edgeexit.Runtime(tmp_path / "compiled", threads=1).runs_plain_graph


def test_a_disabled_exit_is_credited_the_head_it_skips():
    from edgeexit.calibrate.costs import ExitCosts
    from edgeexit.energy.provenance import NONE

    costs = ExitCosts((1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0), None, NONE, "test",
                      head_ms=(0.5, 0.0, 0.25, 0.0))  # fmt: skip
    per_exit = costs.per_exit_latency(np.array([[INF, 0.5, INF, INF], [0.1, 0.2, 0.3, INF]]))
    np.testing.assert_allclose(per_exit[0], [1.0, 1.5, 2.5, 3.25])  # heads 0 and 2 skipped
    np.testing.assert_allclose(per_exit[1], [1.0, 2.0, 3.0, 4.0])  # every exit kept
    plain = ExitCosts((1.0, 2.0), (1.0, 2.0), None, NONE, "test")
    assert plain.per_exit_latency(np.array([[INF, INF]])).tolist() == [[1.0, 2.0]]
    assert plain.per_exit_energy(np.array([[INF, INF]])) is None


def test_a_disabled_exit_saves_its_heads_modeled_energy_but_measured_energy_is_as_measured():
    from edgeexit.calibrate.costs import exit_costs
    from edgeexit.energy.provenance import MODELED, EnergySource
    from edgeexit.measure.cost_profile import ExitLatency, ExitProfile

    def exits(energy):
        return [ExitProfile(i, ExitLatency(ms, ms, ms, ms, ms, uncontended=ms), energy, None)
                for i, ms in enumerate((1.0, 2.0, 3.0))]  # fmt: skip

    thresholds = np.array([[INF, 0.5, INF], [0.1, 0.2, INF]])
    modeled = exit_costs(exits(None), batch_size=1, energy=MODELED, power_w=2.0,
                         source="test", head_ms=(0.5, 0.25, None))  # fmt: skip
    np.testing.assert_allclose(modeled.per_exit_energy(thresholds)[0], [2.0, 3.0, 5.0])
    np.testing.assert_allclose(modeled.per_exit_energy(thresholds)[1], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(  # the same credit as the time: W x the skipped head's ms
        modeled.per_exit_energy(thresholds), 2.0 * modeled.per_exit_latency(thresholds)
    )
    sensor = EnergySource.measured_by("rapl")
    measured = exit_costs(exits(4.0), batch_size=1, energy=sensor, power_w=2.0,
                          source="test", head_ms=(0.5, 0.25, None))  # fmt: skip
    assert measured.power_w is None
    np.testing.assert_allclose(measured.per_exit_energy(thresholds), [[4.0, 4.0, 4.0]] * 2)
    # the search's figures carry the credit: every sample here leaves at the last exit
    from dataclasses import replace

    from edgeexit.calibrate import ExitTable
    from edgeexit.calibrate.search import evaluate

    table = ExitTable.from_predictions(np.zeros((3, 5), dtype=int), np.zeros((3, 5)))
    credited = evaluate(table, modeled, thresholds[0])
    uncredited = evaluate(table, replace(modeled, head_ms=None), thresholds[0])
    assert credited.energy_mj == pytest.approx(5.0) and uncredited.energy_mj == pytest.approx(6.0)


def test_calibrate_disables_an_exit_whose_head_costs_more_than_it_saves():
    from edgeexit.calibrate import Budget, ExitTable
    from edgeexit.calibrate.costs import ExitCosts
    from edgeexit.calibrate.search import search
    from edgeexit.energy.provenance import NONE

    rng = np.random.default_rng(0)
    n = 400
    # exit 0 is rarely sure and its head is dear; exit 1 is cheap and often sure
    scores = np.stack([rng.random(n) * 0.5, rng.random(n), np.ones(n)])
    predictions = np.zeros((3, n), dtype=int)
    table = ExitTable.from_predictions(predictions, scores)
    latency = (2.0, 2.5, 4.0)
    dear = ExitCosts(latency, latency, None, NONE, "test", head_ms=(1.5, 0.1, 0.0))
    free = ExitCosts(latency, latency, None, NONE, "test")
    budget = Budget(max_accuracy_drop=0.0)
    with_heads = search(table, dear, budget).per_exit
    assert math.isinf(with_heads.thresholds[0])  # disabled: its head is worth skipping
    assert with_heads.mean_latency_ms < search(table, free, budget).per_exit.mean_latency_ms


def test_profile_records_what_each_head_adds(bundles):
    from edgeexit.measure.profiling import profile_bundle

    bundle, heads = bundles
    profile = profile_bundle(bundle, repeats=2, warmup=0, rounds=2, min_seconds=0.0)
    recorded = [s.head_ms for s in profile.segments]
    assert all(h is not None and h >= 0 for h in recorded[:-1]) and recorded[-1] is None
    assert all(s.head_ms is None for s in profile_bundle(heads, repeats=2, warmup=0, rounds=2,
                                                         min_seconds=0.0).segments)  # fmt: skip


def test_every_exit_disabled_runs_the_plain_graph_alone(bundles, tmp_path):
    bundle, heads = bundles
    last = read_manifest(bundle).segments[-1]
    assert last.plain is not None and (bundle / last.plain.file).is_file()
    runtime, every = edgeexit.Runtime(bundle, threads=1), edgeexit.Runtime(heads, threads=1)
    assert runtime.runs_plain_graph and len(runtime.sessions) == 1
    assert not every.runs_plain_graph
    x = samples()
    for batch in (x, x[:1], x[:5]):
        got, want = runtime.run(batch), every.run(batch)
        np.testing.assert_array_equal(got.logits, want.logits)
        assert got.exit_index.tolist() == [3] * len(batch)
        assert math.isnan(got.segment_ms[0]) and got.segment_ms[-1] > 0
        assert got.to_json()["segment_ms"][:3] == [None, None, None]
    # a call that enables an exit runs the chain with its heads, opened then
    got = runtime.run(x, thresholds=(0.2, INF, INF, INF))
    np.testing.assert_array_equal(got.logits, every.run(x, thresholds=(0.2, INF, INF, INF)).logits)
    assert runtime.run(x).exit_index.tolist() == [3] * len(x)  # and back to the plain graph
    # a cap before the last exit has no plain graph: its chain runs
    assert not edgeexit.Runtime(bundle, threads=1, max_exit=2).runs_plain_graph
    assert not edgeexit.Runtime(bundle, threads=1, bodies=False).runs_plain_graph


def test_a_changed_plain_graph_is_refused(bundles, tmp_path):
    bundle, _ = bundles
    copy = shutil.copytree(bundle, tmp_path / "b")
    plain = read_manifest(copy).segments[-1].plain.file
    with open(copy / plain, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{plain} does not match its sha256"):
        edgeexit.Runtime(copy)
    from edgeexit.inspection import describe_bundle

    assert plain in describe_bundle(copy).integrity  # inspect checks every file too
    assert describe_bundle(bundle).segments[-1].plain_bytes > 0


def test_graphs_of_different_opsets_are_not_joined():
    import onnx
    from onnx import helper

    from edgeexit.compile.plain_graph import CannotJoin, join_graphs

    def identity(name_in, name_out, opset):
        graph = helper.make_graph(
            [helper.make_node("Identity", [name_in], [name_out])], "g",
            [helper.make_tensor_value_info(name_in, onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info(name_out, onnx.TensorProto.FLOAT, [1])],
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    joined = join_graphs([identity("x", "c", 17), identity("c", "y", 17)])
    assert [i.name for i in joined.graph.input] == ["x"]
    assert [o.name for o in joined.graph.output] == ["y"]
    with pytest.raises(CannotJoin):
        join_graphs([identity("x", "c", 17), identity("c", "y", 18)])
    with pytest.raises(CannotJoin, match="does not give"):
        join_graphs([identity("x", "c", 17), identity("d", "y", 17)])


def _input_sum(runtime, x):
    return runtime._chain.known_plan(x).input_sum[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_plain_graph_sums_its_inputs_and_the_runtime_refuses_nan_by_that_sum(
    bundles, tmp_path, bad
):
    """Runtime reads the plain graph's INPUT_SUM after the call instead of reducing the
    inputs in numpy before it; a bundle whose plain graph lacks it is checked in numpy."""

    bundle, _ = bundles
    runtime = edgeexit.Runtime(bundle, threads=1)
    assert runtime.runs_plain_graph and runtime._chain.sums_inputs
    x = samples(6)
    runtime.run(x)  # the shape is known: the next call takes the shortest path
    assert _input_sum(runtime, x) == pytest.approx(float(x.sum(dtype=np.float64)), rel=1e-5)
    # finite numbers whose float32 sum overflows: the exact check lets them through
    assert runtime.run(np.full_like(x, 3e38)).exit_index.tolist() == [3] * 6
    assert math.isinf(_input_sum(runtime, x))

    old = edgeexit.Runtime(_with_plain_graph_edited(bundle, tmp_path, _without_sum), threads=1)
    assert old.runs_plain_graph and not old._chain.sums_inputs
    old.run(x)

    bad_x = x.copy()
    bad_x[1, 0, 4, 4] = bad
    bad_x[5, 0, 0, 7] = bad
    for rt in (runtime, old):
        for call in (bad_x, bad_x[1:2], [bad_x]):  # known shape, a new one, a sequence
            with pytest.raises(InputError, match=r"input 'x' holds NaN or inf in .*rows"):
                rt.run(call)
        np.testing.assert_array_equal(rt.run(x).logits, runtime.run(x).logits)


def _with_plain_graph_edited(bundle, tmp_path, edit):
    """A copy of ``bundle`` whose plain graph ``edit(graph)`` changed, its sha256 updated."""
    return _with_graphs_edited(bundle, tmp_path, edit, lambda doc: [doc["segments"][-1]["plain"]])


def _with_graphs_edited(bundle, tmp_path, edit, entries):
    """A copy of ``bundle`` whose graphs ``entries(manifest document)`` names were changed
    by ``edit(graph)``, their sha256 updated."""
    import hashlib

    import onnx

    copy = shutil.copytree(bundle, tmp_path / "edited")  # tmp_path: one edit per folder
    doc = json.loads((copy / "manifest.json").read_text())
    for entry in entries(doc):
        path = copy / entry["file"]
        model = onnx.load(path, load_external_data=False)
        edit(model.graph)
        onnx.save(model, path)
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


def _without_sum(graph):
    from edgeexit.bundle import INPUT_SUM

    for field, keep in ((graph.node, lambda n: not n.name.startswith(INPUT_SUM)),
                        (graph.output, lambda o: o.name != INPUT_SUM)):  # fmt: skip
        kept = [item for item in field if keep(item)]
        del field[:]
        field.extend(kept)


def test_export_gives_segment_0_and_its_body_the_input_sum(bundles):
    import onnx

    from edgeexit.bundle import INPUT_SUM

    bundle, heads = bundles
    segments = read_manifest(bundle).segments
    files = [s.file for s in segments] + [s.body.file for s in segments[:-1]]
    sums = {f for f in files if INPUT_SUM in [o.name for o in onnx.load(bundle / f).graph.output]}
    assert sums == {"segment_00.onnx", "body_00.onnx"}
    assert edgeexit.Runtime(heads, threads=1)._chain.sums_inputs  # segment_00 with its head


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("thresholds", [(0.3, INF, 0.2, INF), (0.0, 0.0, 0.0, 0.0)])
def test_early_exit_calls_refuse_nan_by_the_first_graphs_sum(bundles, tmp_path, bad, thresholds):
    """A call whose exits can fire runs the chain of segments, whose first graph (segment 0
    or its body) sums the inputs: NaN and inf are refused by that sum after the segments
    ran, with no numpy pass over the inputs on a known shape (every sample leaving at the
    first exit included). A bundle whose segment 0 lacks it is checked in numpy."""
    from unittest import mock

    bundle, heads = bundles
    old = _with_graphs_edited(heads, tmp_path, _without_sum, lambda doc: [doc["segments"][0]])
    runtimes = [edgeexit.Runtime(b, threads=1) for b in (bundle, heads, old)]
    assert [rt._chain.sums_inputs for rt in runtimes] == [True, True, False]
    x = samples(6)
    bad_x = x.copy()
    bad_x[2, 0, 3, 3] = bad
    want = runtimes[1].run(x, thresholds=thresholds)
    for rt in runtimes:
        rt.run(x, thresholds=thresholds)  # the shape is known now
        no_numpy = mock.patch("edgeexit.runtime.runtime.all_finite",
                              side_effect=AssertionError("numpy pass"))  # fmt: skip
        with no_numpy if rt._chain.sums_inputs else contextlib.nullcontext():
            got = rt.run(x, thresholds=thresholds)
            for call in (bad_x, [bad_x]):
                with pytest.raises(InputError, match=r"input 'x' holds NaN or inf in .*rows 2\)"):
                    rt.run(call, thresholds=thresholds)
        with pytest.raises(InputError, match=r"rows 0\)"):  # a new shape: checked in full
            rt.run(bad_x[2:4], thresholds=thresholds)
        np.testing.assert_array_equal(got.logits, want.logits)
        np.testing.assert_array_equal(got.exit_index, want.exit_index)


def _wrong_sum(wrong):
    """An edit of a graph's INPUT_SUM into one that is not the sum of its inputs."""
    from onnx import TensorProto, helper

    from edgeexit.bundle import INPUT_SUM

    def edit(graph):
        (reduce,) = [n for n in graph.node if n.output[0] == INPUT_SUM]
        x = reduce.input[0]
        if wrong == "ignores NaN":  # NaN replaced by 0 before the sum
            zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
            graph.node.insert(0, helper.make_node("IsNaN", [x], ["nan_x"]))
            graph.node.insert(1, helper.make_node("Constant", [], ["zero"], value=zero))
            graph.node.insert(2, helper.make_node("Where", ["nan_x", "zero", x], ["clean_x"]))
            reduce.input[0] = "clean_x"
        elif wrong == "counts":  # the number of elements, not their sum
            graph.node.insert(0, helper.make_node("Shape", [x], ["shape_x"]))
            graph.node.insert(1, helper.make_node("ReduceProd", ["shape_x"], ["n_x"], keepdims=0))
            graph.node.insert(2, helper.make_node("Cast", ["n_x"], ["n_f"], to=TensorProto.FLOAT))
            reduce.op_type, reduce.input[:] = "Identity", ["n_f"]
            del reduce.attribute[:]
        else:
            reduce.output[0] = "sum_f"
            cast = helper.make_node("Cast", ["sum_f"], [INPUT_SUM], to=TensorProto.INT64)
            graph.node.append(cast)
            (out,) = [o for o in graph.output if o.name == INPUT_SUM]
            out.type.tensor_type.elem_type = TensorProto.INT64

    return edit


WRONG_SUM_ERRORS = {"ignores NaN": "for an input holding NaN", "counts": "for inputs summing to",
                    "int64": "tensor.int64."}  # fmt: skip


@pytest.mark.parametrize("wrong", list(WRONG_SUM_ERRORS))
def test_a_plain_graph_whose_input_sum_is_not_one_is_refused_at_load(bundles, tmp_path, wrong):
    """The runtime refuses NaN by the graph's sum: a graph whose sum hides NaN (or is no
    float32 scalar) must not load, or NaN inputs would get an answer."""
    copy = _with_plain_graph_edited(bundles[0], tmp_path, _wrong_sum(wrong))
    with pytest.raises(BundleError, match=WRONG_SUM_ERRORS[wrong]):
        edgeexit.Runtime(copy, threads=1)


def test_a_first_segment_whose_input_sum_hides_nan_is_refused_when_opened(bundles, tmp_path):
    """Segment 0's sum is checked like the plain graph's, when a chain first runs it: at
    load for its body, at the first call that enables exit 0 for the segment with its
    head (the file named either way)."""
    bundle, _ = bundles
    body = _with_graphs_edited(bundle, tmp_path / "body", _wrong_sum("ignores NaN"),
                               lambda doc: [doc["segments"][0]["body"]])  # fmt: skip
    with pytest.raises(BundleError, match="body_00.onnx gives .* for an input holding NaN"):
        edgeexit.Runtime(body, threads=1, bodies=True, max_exit=2)  # no plain graph: body_00
    head = _with_graphs_edited(bundle, tmp_path / "head", _wrong_sum("ignores NaN"),
                               lambda doc: [doc["segments"][0]])  # fmt: skip
    runtime = edgeexit.Runtime(head, threads=1)  # runs the plain graph: segment 0 not opened
    with pytest.raises(BundleError, match="segment_00.onnx gives .* for an input holding NaN"):
        runtime.run(samples(2), thresholds=(0.5, INF, INF, INF))


def test_input_sum_casts_each_float_input_and_leaves_integer_inputs_alone():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeexit.bundle import INPUT_SUM
    from edgeexit.compile.plain_graph import with_input_sum

    inputs = [("a", TensorProto.FLOAT16), ("ids", TensorProto.INT64), ("b", TensorProto.DOUBLE)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["y"])], "g",
        [helper.make_tensor_value_info(n, t, ["batch", 3]) for n, t in inputs],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(with_input_sum(model), full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": np.full((2, 3), 60000, np.float16), "ids": np.ones((2, 3), np.int64),
             "b": np.full((2, 3), -0.5)}  # fmt: skip
    (total,) = session.run([INPUT_SUM], feeds)
    assert total.dtype == np.float32 and total.shape == ()
    assert float(total) == 6 * 60000 - 3  # the float16 inputs summed in float32: no overflow
    feeds["b"][1, 2] = np.nan
    assert math.isnan(session.run([INPUT_SUM], feeds)[0])

    ids_only = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1])],
    ))  # fmt: skip
    assert [o.name for o in with_input_sum(ids_only).graph.output] == ["y"]
