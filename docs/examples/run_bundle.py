"""Run an edgeexit bundle with plain onnxruntime, following only its manifest.json.

This is the whole device-side contract (docs/design.md, *The bundle*) in a few lines;
edgeexit's runtime is the fast, measured way to do the same. tests/test_export_bundle.py
imports this file, so it cannot rot.

    python docs/examples/run_bundle.py BUNDLE_DIR DATA.npz
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load_chain(bundle_dir):
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    sessions = [
        ort.InferenceSession(
            str(Path(bundle_dir) / seg["file"]), providers=["CPUExecutionProvider"]
        )
        for seg in manifest["segments"]
    ]
    return manifest, sessions


def run_every_exit(bundle_dir, inputs):
    """Every sample through every segment: each exit's (logits, score), in order."""
    manifest, sessions = load_chain(bundle_dir)
    values = dict(inputs)  # model inputs by name, then each segment's outputs by name
    exits = []
    for seg, sess in zip(manifest["segments"], sessions):
        names = [*seg["carry"], seg["logits"], seg["score"]]
        values.update(zip(names, sess.run(names, {n: values[n] for n in seg["inputs"]})))
        exits.append((values[seg["logits"]], values[seg["score"]]))
    return exits


def run_early_exit(bundle_dir, inputs):
    """Each sample leaves at the first exit whose score reaches its threshold (null: never;
    the last exit always exits). Returns (logits of the exit taken, exit index per sample)."""
    manifest, sessions = load_chain(bundle_dir)
    batch = len(next(iter(inputs.values())))
    active = np.arange(batch)  # original index of each sample still running
    values = dict(inputs)
    logits_out, exit_index = None, np.full(batch, -1)
    for i, (seg, sess) in enumerate(zip(manifest["segments"], sessions)):
        names = [*seg["carry"], seg["logits"], seg["score"]]
        values = dict(zip(names, sess.run(names, {n: values[n] for n in seg["inputs"]})))
        logits, score = values[seg["logits"]], values[seg["score"]]
        threshold = manifest["thresholds"][i]
        if i == len(sessions) - 1:
            leave = np.ones(len(active), dtype=bool)
        elif threshold is None:
            leave = np.zeros(len(active), dtype=bool)
        else:
            leave = score >= threshold
        if logits_out is None:
            logits_out = np.zeros((batch, logits.shape[1]), dtype=logits.dtype)
        logits_out[active[leave]] = logits[leave]
        exit_index[active[leave]] = i
        active = active[~leave]
        values = {n: values[n][~leave] for n in seg["carry"]}
        if len(active) == 0:
            break
    return logits_out, exit_index


if __name__ == "__main__":
    bundle, data = sys.argv[1], np.load(sys.argv[2])
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    names = [i["name"] for i in manifest["inputs"]]
    feed = {n: data[n] if n in data else data["x"] for n in names}
    logits, exits = run_early_exit(bundle, feed)
    print("predictions:", logits.argmax(axis=1))
    print("exit taken: ", exits)
