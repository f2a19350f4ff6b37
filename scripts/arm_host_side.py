"""Host half of scripts/test-arm.sh: make what the emulated aarch64 tests load and compare.

Writes into OUT_DIR:

- ``tiny.onnx`` and ``tiny_expected.npz``: a two-node model and the host's output for it,
  the first proof that an emulated ONNX Runtime session runs at all;
- ``fp32/`` and ``int8-rpi4/``: the digits example (briefly trained, so int8 calibration
  and the exits mean something) exported as an fp32 bundle, and exported for the rpi4
  target with calibration data (``calibration.npz``), which makes it int8;
- ``inputs.npz``: the test digits the emulated side runs;
- ``denoise/`` and ``tokens/``: exits beyond classification (an image per exit with a
  gate; per-token exits), seeded and untrained, with ``host_denoise.npz`` and
  ``host_tokens.npz``: their inputs, thresholds and the host Runtime's answers;
- ``host_<bundle>.npz``: the host Runtime's outputs on those digits (every exit's logits
  and scores, and a run with thresholds that make samples leave at every exit), the
  host's ONNX Runtime version, and which kernels made them (``kernels``): the int8
  bundle's reference is its quantization simulated in fp32 (QDQ pairs left unfused, ORT
  basic optimization), as `edgeexit compile` checks int8 for another architecture, because
  x86 int8 kernels differ between CPUs (AVX2 without VNNI saturates) and the Pi's do not.

Needs the export side (torch, onnx, scikit-learn): run it with the host's .venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 0
N_TEST = 64  # digits the emulated side runs: enough to reach every exit, quick under qemu
TRAIN_EPOCHS = 5


def write_tiny_model(out_dir: Path) -> None:
    """A two-node model (MatMul, Relu) and the host's output for a fixed input."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime >= 1.17 (the declared minimum) reads
    onnx.checker.check_model(model)
    onnx.save(model, out_dir / "tiny.onnx")

    x = rng.standard_normal((3, 8)).astype(np.float32)
    session = ort.InferenceSession(out_dir / "tiny.onnx", providers=["CPUExecutionProvider"])
    (z,) = session.run(None, {"x": x})
    np.savez(out_dir / "tiny_expected.npz", x=x, z=z)


def export_bundles(out_dir: Path) -> list[Path]:
    """The digits example, trained briefly, as an fp32 bundle and an int8 rpi4 bundle."""
    import torch

    import edgeexit
    from edgeexit.examples import digits_resnet, load_digits, train_multi_exit

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    digits = load_digits(seed=SEED)
    model = digits_resnet(width=8)
    train_multi_exit(model, digits.train.x, digits.train.y, epochs=TRAIN_EPOCHS, seed=SEED)
    model.eval()
    fp32, int8 = out_dir / "fp32", out_dir / "int8-rpi4"
    calib = digits.calibration.save_npz(out_dir / "calibration.npz")
    edgeexit.export(model, digits.train.x[:4], fp32)
    # What `edgeexit export --target rpi4 --calib-data D.npz` does: export, then int8.
    edgeexit.export(model, digits.train.x[:4], int8, target="rpi4", calib_data=calib)
    np.savez(out_dir / "inputs.npz", x=digits.test.x[:N_TEST], y=digits.test.y[:N_TEST])
    return [fp32, int8]


def save_host_outputs(bundle: Path, x: np.ndarray, out_file: Path) -> None:
    """Every exit's logits and scores, and a thresholded run, from the host's Runtime.

    Each threshold sits in the widest gap between the middle scores of its exit, so samples
    leave at every exit and few scores lie within rounding of a threshold (the emulated side
    compares exit decisions only where none does).
    """
    import dataclasses

    import onnxruntime as ort

    from edgeexit.runtime import Runtime
    from edgeexit.targets import load_target

    target = load_target("rpi4")
    simulated = bundle.name.startswith("int8")
    if simulated:
        target = dataclasses.replace(target, graph_optimization="basic")
    rt = Runtime(bundle, target=target, threads=1)
    every = rt.run_all_exits(x)
    thresholds = np.array([threshold_in_widest_gap(s) for s in every.scores], np.float32)
    thresholds[-1] = np.inf  # the last exit takes every remaining sample anyway
    result = rt.run(x, thresholds=thresholds.tolist())
    np.savez(
        out_file,
        all_logits=every.logits,
        all_scores=every.scores,
        thresholds=thresholds,
        logits=result.logits,
        exit_index=result.exit_index,
        onnxruntime_version=np.array(ort.__version__),
        kernels=np.array("simulated" if simulated else "host"),
    )


def export_split(out_dir: Path, x: np.ndarray) -> None:
    """``split/``: the fp32 bundle with the host run's thresholds, split after exit 0 with an
    int8 carry, and the host's split answers (device part, wire, server part in-process)."""
    import json
    import shutil

    from edgeexit.offload.device import SplitRuntime
    from edgeexit.offload.make import split_bundle
    from edgeexit.offload.tail import InProcessLink, Tail

    split = out_dir / "split"
    shutil.copytree(out_dir / "fp32", split)
    thresholds = np.load(out_dir / "host_fp32.npz")["thresholds"].tolist()
    doc = json.loads((split / "manifest.json").read_text())
    doc["thresholds"] = [None if t == np.inf else t for t in thresholds]
    (split / "manifest.json").write_text(json.dumps(doc))
    split_bundle(split, 0, encoding="int8", data=out_dir / "inputs.npz")
    link = InProcessLink(Tail(split, threads=1))
    result = SplitRuntime(split, server=None, link=link, threads=1).run(x)
    assert not result.degraded.any(), result.reason
    np.savez(
        out_dir / "host_split.npz",
        logits=result.logits,
        exit_index=result.exit_index,
        request=np.frombuffer(link.last_request, np.uint8),
    )


def threshold_in_widest_gap(scores: np.ndarray) -> float:
    """The midpoint of the widest gap between sorted scores in the 30th-70th percentile."""
    ranked = np.sort(scores)
    lo, hi = len(ranked) * 3 // 10, len(ranked) * 7 // 10
    k = lo + int(np.argmax(np.diff(ranked[lo : hi + 1])))
    return float(ranked[k] + ranked[k + 1]) / 2


DECODER_PROMPT = [3, 14, 15, 9, 26, 5, 35]
DECODER_THRESHOLDS = (0.5, 0.5)


DECODER_FORMS = {  # bundle folder -> export_decoder's form arguments
    "decoder": {"attention": "plain"},  # standard operators: any onnxruntime edgeexit takes
    "decoder_fused": {},  # fused fp32 (heads of 16): onnxruntime >= 1.20
    "decoder_int8": {"precision": "int8"},  # MatMulNBits: the ARM kernels' rounding too
    "decoder_draft": {"draft": "int4", "block_size": 16},  # an int4 draft, fp32 verified
}


def export_decoder_bundle(out_dir: Path) -> None:
    """A small seeded decoder (3 exits) in each of DECODER_FORMS, the prompt as
    ``decoder_prompt.txt`` and the host's tokens for every bundle and generation mode as
    ``host_decoder.json`` ({bundle: {mode: tokens}})."""
    import json

    import torch

    from edgeexit.export.decoder_export import export_decoder
    from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder
    from edgeexit.generation import Generator

    torch.manual_seed(SEED)
    config = DecoderConfig(dim=32, heads=2, layers=4, hidden=64, exit_after=(1, 2, 4),
                           max_positions=64, vocab_size=40, eos_token_id=None)  # fmt: skip
    model = MultiExitDecoder(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked, so that exits are confident sometimes
    (out_dir / "decoder_prompt.txt").write_text(" ".join(map(str, DECODER_PROMPT)))
    tokens = {}
    for name, form in DECODER_FORMS.items():
        export_decoder(model, out_dir / name, **form)
        generator = Generator(out_dir / name, threads=1)
        tokens[name] = {
            mode: list(
                generator.generate(
                    DECODER_PROMPT, max_new_tokens=16, mode=mode, thresholds=DECODER_THRESHOLDS
                ).tokens
            )  # fmt: skip
            for mode in ("full", "self-speculative", "early-exit")
        }
    (out_dir / "host_decoder.json").write_text(json.dumps(tokens))


def export_output_kinds(out_dir: Path) -> None:
    """An image-exit bundle and a per-token-exit bundle, each with the host's answers at
    thresholds in the widest gap of the middle scores (exits taken at every depth)."""
    import torch

    import edgeexit
    from edgeexit.examples.denoise import denoiser
    from edgeexit.examples.tokens import tagging_task, token_tagger

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    images = rng.random((N_TEST, 1, 8, 8), dtype=np.float32)
    edgeexit.export(denoiser(width=8, blocks=2).eval(), torch.from_numpy(images[:2]),
                    out_dir / "denoise", criterion="gate", output="tensor")  # fmt: skip
    ids, mask, _ = tagging_task(8, seq_len=16)
    edgeexit.export(token_tagger(seq_len=16, dim=16, heads=2, layers=3).eval(),
                    (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])),
                    out_dir / "tokens", output="tokens")  # fmt: skip
    for name, inputs in (("denoise", [images]), ("tokens", [ids, mask])):
        rt = edgeexit.Runtime(out_dir / name, target="rpi4", threads=1)
        scores = rt.run_all_exits(inputs).scores
        thresholds = [threshold_in_widest_gap(s.ravel()) for s in scores[:-1]] + [np.inf]
        result = rt.run(inputs, thresholds=thresholds)
        np.savez(out_dir / f"host_{name}.npz", *inputs, thresholds=np.array(thresholds),
                 outputs=result.logits, exit_index=result.exit_index)  # fmt: skip


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tiny_model(out_dir)
    export_decoder_bundle(out_dir)
    export_output_kinds(out_dir)
    bundles = export_bundles(out_dir)
    x = np.load(out_dir / "inputs.npz")["x"]
    for bundle in bundles:
        save_host_outputs(bundle, x, out_dir / f"host_{bundle.name}.npz")
    export_split(out_dir, x)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: arm_host_side.py OUT_DIR")
    main(Path(sys.argv[1]))
