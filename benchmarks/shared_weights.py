"""Weights stored once: an ALBERT bundle's size and resident memory, shared against inlined.

ALBERT applies one layer at every depth, so each segment of a bundle holds the same
weights. Exports a config-built ALBERT (random init) as a bundle (the shared layer stored
once, in shared_weights.bin) and as one ONNX graph, makes a copy of the bundle with every
segment's weights inlined (what bundles were before), and reports the three sizes and,
for both bundles, the resident memory a Runtime holds once it has run one batch (VmRSS
growth in a fresh process; Linux only).

Usage:
  PYTHONPATH=. python benchmarks/shared_weights.py [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path


def inlined_copy(bundle: Path, out: Path) -> Path:
    """The bundle with every segment's weights inside its own graph."""
    import onnx

    from edgeexit.bundle import GraphFile, read_manifest, sha256_file, write_manifest

    out.mkdir()
    manifest = read_manifest(bundle)

    def inline(file: str) -> str:
        onnx.save(onnx.load(str(bundle / file)), out / file)  # loads the external data
        return sha256_file(out / file)

    def inlined(graph: GraphFile | None) -> GraphFile | None:
        return None if graph is None else GraphFile(graph.file, inline(graph.file))

    segments = []
    for seg in manifest.segments:
        segments.append(replace(seg, sha256=inline(seg.file), external_data=(),
                                body=inlined(seg.body), plain=inlined(seg.plain),
                                prefix=inlined(seg.prefix)))  # fmt: skip
    write_manifest(out, replace(manifest, segments=tuple(segments)))
    return out


def size_mb(path: Path) -> float:
    files = path.iterdir() if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 2**20


def resident_mb(bundle: Path) -> float:
    """A Runtime's resident memory growth, fresh process, one batch (max_exit_memory's
    probe, uncapped: the same token inputs)."""
    from max_exit_memory import PROBE  # benchmarks/ is on the path of a script run here

    out = subprocess.run([sys.executable, "-c", PROBE, str(bundle), "none"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])["grew_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    import torch
    import transformers as tf

    import edgeexit
    from edgeexit.examples.hf import multi_exit_encoder
    from edgeexit.export.bundle_export import export_monolithic

    torch.manual_seed(0)
    config = tf.AlbertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=6,
                             num_attention_heads=4, intermediate_size=1024,
                             embedding_size=128, max_position_embeddings=64)  # fmt: skip
    model = multi_exit_encoder(tf.AlbertModel(config).eval(), num_labels=3).eval()
    ids = torch.randint(3, 1000, (2, 64))
    example = (ids, torch.ones_like(ids))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        edgeexit.export(model, example, root / "shared")
        export_monolithic(model, example, root / "one.onnx")
        inlined = inlined_copy(root / "shared", root / "inlined")
        doc = {
            "segments": config.num_hidden_layers,
            "one_graph_mb": size_mb(root / "one.onnx"),
            "shared_mb": size_mb(root / "shared"),
            "inlined_mb": size_mb(inlined),
            "shared_resident_mb": resident_mb(root / "shared"),
            "inlined_resident_mb": resident_mb(inlined),
        }
    doc["shared_vs_one_graph"] = doc["shared_mb"] / doc["one_graph_mb"]
    doc["inlined_vs_one_graph"] = doc["inlined_mb"] / doc["one_graph_mb"]
    print(f"ALBERT, {doc['segments']} segments sharing one layer")
    print(f"  one graph        {doc['one_graph_mb']:6.2f} MB")
    print(f"  bundle, shared   {doc['shared_mb']:6.2f} MB = {doc['shared_vs_one_graph']:.2f}x "
          f"the one graph; resident {doc['shared_resident_mb']:.1f} MB")  # fmt: skip
    print(f"  bundle, inlined  {doc['inlined_mb']:6.2f} MB = {doc['inlined_vs_one_graph']:.2f}x "
          f"the one graph; resident {doc['inlined_resident_mb']:.1f} MB")  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
