"""Early-exit text generation, side by side in one process, on the demo's trained decoder.

Five ways to continue the same held-out code prompts greedily, one thread each, the order
of the ways alternating prompt by prompt (``round_order``) so that drift on a shared
machine hits them alike:

  (a) full            edgeexit's segment chain, every segment for every token
  (b) one-graph       the same weights as ONE ONNX graph with a KV cache (ids + past in,
                      logits + new keys/values out), caches bound in place: what a user
                      would deploy today, with edgeexit's own cache handling
  (c) self-spec       edgeexit self-speculative decoding (the calibrated k, gamma, stop)
  (d) early-exit      edgeexit early-exit decoding (the calibrated thresholds)
  (e) hf-assistant    transformers' generate(assistant_early_exit=k) on the same weights
                      in PyTorch (LayerSkip's self-speculation in transformers)
  (f) hf-full         transformers' plain greedy generate, for (e)'s reference

Reported: tokens/s, speed-up against (a), acceptance rate, mean exit depth, and token
agreement with (a); self-speculative output must equal (a) token for token, and any
divergence is listed with its step and the full model's confidence there.

Usage:
  PYTHONPATH=. python benchmarks/generation.py [--prompts 16] [--new 48] [--save F.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from edgeexit.examples.generation_demo import (
    demo_decoder,
    held_out_cross_entropy,
    held_out_prompts,
)
from edgeexit.examples.hf_llama import decoder_to_llama
from edgeexit.export.convert import export_graph
from edgeexit.export.decoder_export import export_decoder
from edgeexit.generation import Generator, text
from edgeexit.generation.caches import LayerCache, SegmentRunner
from edgeexit.generation.calibrate import calibrate_generation, token_agreement
from edgeexit.measure.rounds import round_order
from edgeexit.measure.verdict import interval, resample

RESULTS = Path(__file__).parent / "results"


class OneGraph(torch.nn.Module):
    """The whole decoder and its head as one graph: (ids, past per layer) -> (logits,
    new keys/values per layer); the logits ride in the 'hidden_out' slot."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, *past):
        hidden = self.model.embed_tokens(ids)
        new = []
        at = self.model.layers[0].positions(hidden, past[0])
        for j, layer in enumerate(self.model.layers):
            hidden, k, v = layer(hidden, past[2 * j], past[2 * j + 1], at)
            new += [k, v]
        return (self.model.head(hidden), *new)


class OneGraphDecoder:
    """Greedy decoding over OneGraph with caches bound in place (edgeexit's own runner)."""

    def __init__(self, model, manifest, folder: Path) -> None:
        c = model.config
        n = c.layers
        names_in = ["input_ids"] + [f"past_{k}_{j}" for j in range(n) for k in ("key", "value")]
        names_out = ["hidden_out"] + [f"{k}_{j}" for j in range(n) for k in ("key", "value")]
        axes = {x: {1: "past" if x.startswith("past_") else "tokens"} for x in names_in + names_out}
        args = [torch.randint(0, c.vocab_size, (1, 3))] + [
            torch.randn(1, 2, c.heads, c.head_dim) for _ in range(2 * n)
        ]
        path = folder / "one_graph.onnx"
        export_graph(OneGraph(model).eval(), args, path, names_in, names_out, opset=17,
                     exporter="torchscript", axes=axes)  # fmt: skip
        self.bytes = path.stat().st_size
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        caches = [LayerCache(manifest) for _ in range(n)]
        self.runner = SegmentRunner(session, path.name, True, caches, c.vocab_size,
                                    manifest.max_positions)  # fmt: skip
        self.eos = c.eos_token_id

    def generate(self, prompt: np.ndarray, new: int) -> tuple[list[int], float]:
        start = time.perf_counter()
        self.runner.length = 0
        out = [int(self.runner.run(prompt.astype(np.int64))[-1].argmax())]
        while len(out) < new and out[-1] != self.eos:
            out.append(int(self.runner.run(np.array([out[-1]]))[-1].argmax()))
        return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts timed")
    parser.add_argument("--new", type=int, default=48, help="new tokens per prompt")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompts")
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = demo_decoder().eval()
    prompts = held_out_prompts(32 + args.prompts)
    calibration, test = prompts[:32], prompts[32:]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        manifest = export_decoder(model, bundle, tokenizer=text.BYTES)
        report = calibrate_generation(bundle, calibration, held_out=test,
                                      max_new_tokens=args.new, threads=1)  # fmt: skip
        generator = Generator(bundle, threads=1)
        one = OneGraphDecoder(model, manifest, Path(tmp))
        bundle_bytes = sum(f.stat().st_size for f in bundle.glob("*.onnx"))
        k = report.self_speculative["k"]
        exit_layer = model.config.exit_after[k - 1]
        hf = decoder_to_llama(model)
        results = run_all(generator, one, hf, exit_layer, test, args.new, args.rounds)
    doc = summarize(results, generator.num_exits)
    for divergence in doc["divergences"]:  # why: how close the full model's call was
        divergence.update(logit_gap(model, test[divergence["prompt"]], results, divergence))
    doc.update(
        machine=f"{platform.machine()} {platform.processor()}".strip(),
        onnxruntime=ort.__version__, torch=torch.__version__, prompts=len(test),
        new_tokens=args.new, rounds=args.rounds, calibration=report.to_json(),
        bundle_bytes=bundle_bytes, one_graph_bytes=one.bytes,
        size_ratio=bundle_bytes / one.bytes, assistant_early_exit_layer=exit_layer,
        exit_cross_entropy=held_out_cross_entropy(model),
    )  # fmt: skip
    Console().print(render(doc))
    for line in goal_lines(doc):
        print(line)
    entropies = ", ".join(f"{c:.3f}" for c in doc["exit_cross_entropy"])
    print(f"held-out next-byte cross-entropy per exit (nats): {entropies}")
    for d in doc["divergences"]:
        print(f"divergence: prompt {d['prompt']} step {d['step']}: full {d['full_token']}, "
              f"self-spec {d['self_spec_token']}; the full model's top two {d['top2_tokens']} "
              f"{d['logit_gap']:.2e} apart")  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


def run_all(generator, one, hf, exit_layer, prompts, new, rounds) -> dict[str, list]:
    """Each way's runs, prompt by prompt, with a prompt's mean seconds over the rounds."""
    ways = ["full", "one-graph", "self-spec", "early-exit", "hf-assistant", "hf-full"]
    out: dict[str, list] = {w: [] for w in ways}
    for r in range(rounds):
        for p, prompt in enumerate(prompts):
            for way in round_order(ways, p + r):
                run = run_one(way, generator, one, hf, exit_layer, prompt, new)
                if r == 0:
                    out[way].append(run)
                else:  # greedy: the same tokens every round; only the time adds up
                    out[way][p]["seconds"] += run["seconds"]
    for runs in out.values():
        for run in runs:
            run["seconds"] /= rounds  # a prompt's mean time
    return out


def run_one(way, generator, one, hf, exit_layer, prompt, new) -> dict:
    modes = {"full": "full", "self-spec": "self-speculative", "early-exit": "early-exit"}
    if way in modes:
        g = generator.generate(prompt, max_new_tokens=new, mode=modes[way])
        return {"tokens": list(g.tokens), "seconds": g.seconds, "drafted": g.drafted,
                "accepted": g.accepted, "exits": list(g.exits)}  # fmt: skip
    if way == "one-graph":
        tokens, seconds = one.generate(prompt, new)
        return {"tokens": tokens, "seconds": seconds}
    ids = torch.from_numpy(np.asarray(prompt, dtype=np.int64)[None])
    extra = {"assistant_early_exit": exit_layer} if way == "hf-assistant" else {}
    start = time.perf_counter()
    with torch.no_grad():
        sequence = hf.generate(ids, max_new_tokens=new, do_sample=False, **extra)
    seconds = time.perf_counter() - start
    return {"tokens": sequence[0, len(prompt) :].tolist(), "seconds": seconds}


def logit_gap(model, prompt, results: dict, divergence: dict) -> dict:
    """At a step where self-speculative output left full decoding's: the full model's two
    best tokens there and the gap between their logits (PyTorch, the same weights). A gap
    near float32 rounding is a tie the two orders of summation broke differently."""
    p, step = divergence["prompt"], divergence["step"]
    prefix = [*np.asarray(prompt).tolist(), *results["full"][p]["tokens"][:step]]
    with torch.no_grad():
        logits = model(torch.tensor([prefix]))[-1][0, -1]
    top = torch.topk(logits, 2)
    return {
        "full_token": int(results["full"][p]["tokens"][step]),
        "self_spec_token": int(results["self-spec"][p]["tokens"][step]),
        "top2_tokens": top.indices.tolist(),
        "logit_gap": float(top.values[0] - top.values[1]),
    }


def summarize(results: dict[str, list], num_exits: int) -> dict:
    full = [r["tokens"] for r in results["full"]]
    rate = {w: sum(len(r["tokens"]) for r in rs) / sum(r["seconds"] for r in rs)
            for w, rs in results.items()}  # fmt: skip
    rows = {}
    for way, runs in results.items():
        drafted = sum(r.get("drafted", 0) for r in runs)
        exits = [e for r in runs for e in r.get("exits", [])]
        rows[way] = {
            "tokens_per_s": rate[way],
            "vs_full": rate[way] / rate["full"],
            "agreement_with_full": token_agreement(full, [r["tokens"] for r in runs]),
            "acceptance_rate": sum(r.get("accepted", 0) for r in runs) / drafted
            if drafted else None,
            "mean_exit_depth": (float(np.mean(exits)) + 1) / num_exits if exits else None,
        }  # fmt: skip
    divergences = [
        {"prompt": p, "step": next(i for i, (a, b) in enumerate(zip(f, s)) if a != b)}
        for p, (f, s) in enumerate(zip(full, (r["tokens"] for r in results["self-spec"])))
        if f != s
    ]
    index = resample(len(full))  # prompts are the unit: a 95 % interval over them

    def speedup(way: str, over: str) -> dict:
        tokens = np.array([len(r["tokens"]) for r in results[way]], dtype=float)
        mine = np.array([r["seconds"] for r in results[way]])
        theirs = (
            np.array([len(r["tokens"]) for r in results[over]], dtype=float),
            np.array([r["seconds"] for r in results[over]]),
        )

        def stat(rows: np.ndarray) -> np.ndarray:
            own = tokens[rows].sum(axis=1) / mine[rows].sum(axis=1)
            return own / (theirs[0][rows].sum(axis=1) / theirs[1][rows].sum(axis=1))

        return {"ratio": rate[way] / rate[over], "ci95": list(interval(stat, index))}

    return {
        "ways": rows,
        "self_spec_identical": not divergences,
        "divergences": divergences,
        "self_spec_vs_full": speedup("self-spec", "full"),
        "self_spec_vs_one_graph": speedup("self-spec", "one-graph"),
        "self_spec_vs_hf_assistant": speedup("self-spec", "hf-assistant"),
    }


def render(doc: dict) -> Table:
    table = Table(title=f"greedy generation, {doc['prompts']} held-out prompts x "
                  f"{doc['new_tokens']} tokens, 1 thread ({doc['machine']})")  # fmt: skip
    for col in ("way", "tokens/s", "vs full", "= full", "acceptance", "exit depth"):
        table.add_column(col, justify="right")
    for way, r in doc["ways"].items():
        table.add_row(
            way, f"{r['tokens_per_s']:.0f}", f"{r['vs_full']:.2f}x",
            f"{r['agreement_with_full']:.1%}",
            "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}",
            "-" if r["mean_exit_depth"] is None else f"{r['mean_exit_depth']:.0%}",
        )  # fmt: skip
    return table


def goal_lines(doc: dict) -> list[str]:
    """The issue's goals, each met or NOT met, with the 95 % interval over prompts."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [f"self-speculative output identical to full on every prompt: "
             f"{verdict(doc['self_spec_identical'])}"]  # fmt: skip
    for key, what, goal in (("self_spec_vs_full", "full (segment chain)", 1.5),
                            ("self_spec_vs_one_graph", "the one graph with KV cache", 1.3),
                            ("self_spec_vs_hf_assistant", "transformers assistant_early_exit",
                             2.0)):  # fmt: skip
        r = doc[key]
        lines.append(f"self-speculative vs {what}: {r['ratio']:.2f}x (95 % over prompts "
                     f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}x), goal >= {goal}x: "
                     f"{verdict(r['ratio'] >= goal)}")  # fmt: skip
    lines.append(f"bundle {doc['bundle_bytes'] / 1e6:.1f} MB = {doc['size_ratio']:.2f}x the one "
                 f"graph, goal <= 1.1x: {verdict(doc['size_ratio'] <= 1.1)}")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
