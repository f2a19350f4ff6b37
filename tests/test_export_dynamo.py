"""The dynamo exporter path: an encoder built on nn.MultiheadAttention, with a dynamic batch.

With torch 2.13 the TorchScript exporter cannot export nn.MultiheadAttention's eval-mode
fast path (aten::_native_multi_head_attention); the dynamo exporter can."""

import numpy as np
import onnxruntime as ort
import torch

import edgeexit
from edgeexit.examples.models import example_inputs, tiny_bert
from edgeexit.export import run_exits

torch.set_num_threads(1)


def test_multihead_attention_encoder_exports_with_dynamo(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert(layers=2, torch_attention=True)
    result = edgeexit.export(
        model, example_inputs("tiny_bert"), tmp_path / "b", exporter="dynamo", opset=18
    )
    assert result.manifest.extra["exporter"] == "dynamo" and result.report.ok
    ids, mask = example_inputs("tiny_bert", batch=3, seed=4)
    seg = result.manifest.segments[1]
    sess = ort.InferenceSession(str(tmp_path / "b" / seg.file), providers=["CPUExecutionProvider"])
    assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())  # dynamic batch
    with torch.no_grad():
        step = run_exits(model, (ids, mask))[1]
    feed = dict(zip(seg.inputs, (t.numpy() for t in step.carry_in)))
    (logits,) = sess.run([seg.logits], feed)
    np.testing.assert_allclose(logits, step.logits.numpy(), atol=1e-4)
