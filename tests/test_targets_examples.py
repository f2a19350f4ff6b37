"""Every example model compiles for an int8 ARM target and an fp16 CUDA target, and the
compiled chain still runs by its manifest with fp32 outputs of the same names."""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import edgeexit  # noqa: E402
from edgeexit.bundle import read_manifest, verify_segments  # noqa: E402
from edgeexit.compile.compiler import CompileOptions, compile_bundle  # noqa: E402
from edgeexit.compile.host_chain import host_sessions, run_chain  # noqa: E402
from edgeexit.data import Dataset  # noqa: E402
from edgeexit.examples import EXAMPLE_MODELS, make_token_task  # noqa: E402

# Untrained models: their near-tied logits flip under any precision change, so the accuracy
# bar is the digits test's job (test_targets_digits_int8.py); here every exit is reported.
ANY_DROP = CompileOptions(threads=1, max_quant_drop=1.0)


def example(name):
    torch.manual_seed(0)
    model = EXAMPLE_MODELS[name]().eval()
    if name == "tiny_bert":
        ids, mask, _ = make_token_task(48)
        return model, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), (ids, mask)
    x = np.random.default_rng(0).random((48, 1, 8, 8), dtype=np.float32)
    return model, torch.from_numpy(x[:2]), (x,)


@pytest.fixture(scope="module", params=sorted(EXAMPLE_MODELS))
def exported(request, tmp_path_factory):
    torch.set_num_threads(1)
    model, example_inputs, data = example(request.param)
    criterion = "gate" if request.param == "digits_gated" else "confidence"
    out = tmp_path_factory.mktemp(request.param) / "fp32"
    edgeexit.export(model, example_inputs, out, criterion=criterion)
    return out, Dataset(data, None)


@pytest.mark.parametrize(("target", "method"), [("rpi4", "int8-static-qdq"), ("cuda", "fp16")])
def test_every_example_compiles_and_runs(exported, target, method, tmp_path):
    src, calib = exported
    report = compile_bundle(src, tmp_path / target, target, calib=calib, options=ANY_DROP)
    manifest = read_manifest(tmp_path / target)
    assert report.method == method and len(report.exits) == manifest.num_exits
    assert report.reference == "fp32 predictions"  # no labels: agreement with fp32
    models = [onnx.load(p) for p in verify_segments(tmp_path / target, manifest)]
    first8 = tuple(x[:8] for x in calib.inputs)
    out = run_chain(host_sessions(models, threads=1), manifest, first8)
    assert all(lg.dtype == np.float32 and lg.shape[0] == 8 for lg in out.logits)
    assert all(np.isfinite(s).all() for s in out.scores)
