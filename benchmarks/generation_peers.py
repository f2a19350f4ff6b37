"""Early-exit decoding against the engines users compare it with, on the same weights.

One decoder (the demo's trained one, a random ~100M-parameter one, or a tiny random one)
is built by each engine's own tools, then every build continues the same prompts greedily
on ``--threads`` threads (1), the builds alternating prompt by prompt in a seeded shuffled
order within each round (``measure.rounds.alternating_calls``), every build running every
prompt once a round:

  edgeexit   bundles by ``export_decoder``: plain fp32, fused fp32, fused fp32 with an
             int8 or an int4 draft, fused int8, fused int4 (fused: ONNX Runtime's
             GroupQueryAttention & co.; int8/int4: MatMulNBits, blocks of 32, accuracy
             level 4); each in full, self-speculative and (where calibration left an exit
             open) early-exit decoding; the draft bundles in self-speculative only (their
             full and early-exit decoding are fused fp32's)
  genai      onnxruntime-genai's model builder on the transformers Llama of the same
             weights (``decoder_to_llama``): fp32, int8, int4 (its defaults: MatMulNBits,
             blocks of 32, accuracy level 4), ``og.Generator`` fed the token ids
  llama.cpp  llama.cpp's ``convert_hf_to_gguf.py`` on the same Llama: f32 and f16; q8_0 by
             ``llama_model_quantize`` from the f32 file; each with flash attention on and
             off, ``Llama.generate`` (temperature 0: greedy) on the token ids after a
             ``reset`` (no prompt cache carried from one call to the next), n_ctx the
             model's positions, n_batch 512; its extra buffer types (AMX repacking of
             q8_0 weights) unless a probe in a child process dies with them (it does on
             a VM here: SIGSEGV), which the output then says

Every engine stops at the end-of-text id (256) or after ``--tokens`` new tokens, whichever
comes first, and every call is timed from outside (prompt in, tokens out, prefill
included). Reported per build and mode: tokens/s (median over rounds), the ratio to
onnxruntime-genai fp32 (median of the per-round ratios, with the distribution-free 95 %
interval of that median over rounds, ``measure.rounds.median_interval``), and agreement with
edgeexit plain fp32 full decoding, position-wise (share of positions holding the same
token, a missing or extra token a miss: ``calibrate.token_agreement``) and to the first
difference (share of tokens before each prompt's first difference). "Lossless": each
bundle's self-speculative tokens equal its own full decoding's on every prompt.

Self-speculative settings (k, gamma, draft stop) and early-exit thresholds come from
``calibrate_generation`` on calibration prompts apart from the timed ones (``--calibrate
generation``, the default for demo and tiny), or from a small search over k in
1..exits-1 and gamma in (2, 4, 6), each timed on four calibration prompts, with no
early-exit thresholds (``--calibrate search``, the default for random-100m: its random
weights leave the thresholds nothing to find, and calibrate-generation would time 72
settings on a slow model). Either way the choice and what it took is in the JSON.

The peers are optional and never needed by tests or a device; a peer that cannot be
imported (or built) is skipped with one line saying why. To install them:

  onnxruntime-genai  pip install --target PEERS --no-deps onnxruntime-genai==0.18.0 (it
                     loads the onnxruntime installed, the one edgeexit runs on)
  llama-cpp-python   pip install --target PEERS --no-deps llama-cpp-python==0.3.36 diskcache
                     (builds llama.cpp from source: tens of minutes on 2 cores; numpy,
                     jinja2, typing-extensions come from the environment); its sdist
                     vendors llama.cpp: extract it and pass --llama-cpp-src
                     .../vendor/llama.cpp (the folder holding convert_hf_to_gguf.py and
                     gguf-py). The byte-level tokenizer written here is no model llama.cpp
                     knows, so the converter runs with three of its steps replaced
                     (``CONVERT``: the pre-tokenizer hash lookup, the SentencePiece
                     attempt, one placeholder BPE merge); token ids are fed directly, so
                     nothing ever tokenizes.

Usage:
  PYTHONPATH=PEERS:. python benchmarks/generation_peers.py --model demo \\
      --llama-cpp-src DIR [--prompts 16 --tokens 48 --rounds 11 --threads 1]
      [--calibrate generation|search] [--work DIR] [--keep] [--save F.json] [--quick]
  --quick: 4 prompts x 16 tokens, 3 rounds (a smoke run; use --model tiny).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgeexit.examples.generation_demo import demo_decoder, held_out_prompts
from edgeexit.examples.hf_llama import decoder_to_llama
from edgeexit.export.decoder_export import export_decoder
from edgeexit.export.decoder_model import DecoderConfig, MultiExitDecoder
from edgeexit.generation import Generator, text
from edgeexit.generation.calibrate import calibrate_generation, token_agreement
from edgeexit.generation.options import SpeculativeOptions
from edgeexit.measure.rounds import alternating_calls, median_interval

RANDOM_MODELS = {
    "tiny": DecoderConfig(vocab_size=257, dim=64, heads=4, layers=4, hidden=192,
                          exit_after=(1, 2, 4), max_positions=256),
    "random-100m": DecoderConfig(vocab_size=32000, dim=768, heads=12, layers=12, hidden=2048,
                                 exit_after=(4, 8, 12), max_positions=512),
}  # fmt: skip
# (attention, precision, quantized draft): a draft changes only self-speculative decoding
EDGEEXIT_BUILDS = (
    ("plain", "fp32", None),
    ("fused", "fp32", None),
    ("fused", "fp32", "int8"),
    ("fused", "fp32", "int4"),
    ("fused", "int8", None),
    ("fused", "int4", None),
)
GENAI_PRECISIONS = ("fp32", "int8", "int4")
REFERENCE = "edgeexit plain fp32 full"  # agreement is measured against its tokens
RATIO_TO = "genai fp32"  # speed ratios are to this one (to REFERENCE without genai)
SEARCH_GAMMAS = (2, 4, 6)
SEARCH_PROMPTS = 4
LLAMA_BATCH = 512  # llama.cpp's n_batch: a prompt is one batch
EOS_TEXT = "<|endoftext|>"

# llama.cpp's converter, run with three of its steps replaced for the byte-level tokenizer
# written here (it would refuse it otherwise); the benchmark feeds token ids, so nothing
# here ever tokenizes:
# - its BPE pre-tokenizer lookup by hash knows no such tokenizer (NotImplementedError):
#   GPT-2's pre-tokenizer is declared;
# - Llama's vocabulary is tried as SentencePiece first, which imports sentencepiece even
#   without a tokenizer.model: it gets the FileNotFoundError it would raise then;
# - a byte-level vocabulary has no merges, gguf-py drops an empty list, and llama.cpp's
#   loader refuses a BPE vocabulary without the merges key: one placeholder merge
#   ("\u0120 \u0120", whose product is no token) is written.
CONVERT = """
import sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
import gguf
from conversion.base import TextModel

def no_sentencepiece(self):
    raise FileNotFoundError("no tokenizer.model")

def placeholder_merge(self, path):
    self.merges = ["\u0120 \u0120"]
    return True

TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
TextModel._set_vocab_sentencepiece = no_sentencepiece
gguf.SpecialVocab._try_load_merges_txt = placeholder_merge
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
convert_hf_to_gguf.main()
"""

# llama.cpp's own quantizer (llama_model_quantize): argv = f32 gguf, q8_0 gguf.
QUANTIZE = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
params.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),
                                        ctypes.byref(params)))
"""

# Loads a gguf (argv[1]) with llama.cpp's defaults and evaluates a 32-token prompt.
PROBE = """
import sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_threads=1, n_ctx=64, verbose=False)
llm.eval(list(range(32)))
"""

Call = Callable[[int], object]  # prompt index -> tokens (a list, or a Generation)


def log(line: str) -> None:
    """A progress line on stderr (stdout keeps the table)."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Builds:
    """What was built, in how many seconds, and the peers skipped with why."""

    root: Path
    seconds: dict[str, float]
    skipped: dict[str, str]

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        log(f"{name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        log(f"{name}: {self.seconds[name]:.1f} s")

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        log(f"{name}: skipped: {why}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    prompts = held_out_prompts(args.calibration_prompts + args.prompts)
    calibration, timed = prompts[: args.calibration_prompts], prompts[args.calibration_prompts :]
    root = args.work / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True)
    builds = Builds(root, {}, {})
    try:
        calls, settings = edgeexit_calls(model, calibration, timed, args, builds)
        hf_dir = root / "hf"
        with builds.step("transformers Llama (the peers' input)"):
            write_llama(model, hf_dir)
        calls |= genai_calls(hf_dir, timed, args, builds)
        calls |= llama_cpp_calls(hf_dir, timed, model.config, args, builds)
        sizes = build_bytes(root)
        log(f"timing {len(calls)} builds x {len(timed)} prompts, {args.rounds} rounds")
        with collector_paused():
            answers, seconds = alternating_calls(
                calls, len(timed), rounds=args.rounds, warmup=1,
                progress=lambda r, n: log(f"round {r}/{n}"),
            )  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root)
    doc = summarize(answers, seconds, model.config.exit_after)
    doc.update(setup(args, model, builds, settings, sizes))
    print(markdown(doc))
    if args.save:
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while timing (as ``timeit`` does): with torch
    and transformers loaded, a full collection took ~0.2 s inside one timed call, the same
    call every run (a 16x slower round for that build)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", *RANDOM_MODELS), default="demo")
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts timed")
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=16,
        help="prompts the settings are chosen on, apart from the timed",
    )
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per prompt")
    parser.add_argument("--rounds", type=int, default=11, help="passes over the prompts")
    parser.add_argument("--threads", type=int, default=1, help="threads every engine gets")
    parser.add_argument(
        "--calibrate",
        choices=("generation", "search"),
        help="how self-speculative settings are chosen (see the docstring)",
    )
    parser.add_argument(
        "--llama-cpp-src", type=Path, help="llama.cpp's source (convert_hf_to_gguf.py, gguf-py)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("build/bench/generation_peers"),
        help="builds go to a new folder in here",
    )
    parser.add_argument("--keep", action="store_true", help="keep the builds afterwards")
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4x16 tokens, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.calibration_prompts, args.tokens, args.rounds = 4, 4, 16, 3
    if args.calibrate is None:
        args.calibrate = "search" if args.model == "random-100m" else "generation"
    for name in ("prompts", "calibration_prompts", "tokens", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def load_model(name: str) -> MultiExitDecoder:
    """The demo's trained decoder, or a random one (seeded: the same weights every run)."""
    if name == "demo":
        return demo_decoder().eval()
    torch.manual_seed(0)
    return MultiExitDecoder(RANDOM_MODELS[name]).eval()


# edgeexit ----------------------------------------------------------------------------------


def edgeexit_calls(model, calibration, timed, args, builds: Builds) -> tuple[dict, dict]:
    """Each edgeexit bundle's modes as calls, and the settings chosen for each bundle."""
    calls, settings = {}, {}
    ids = [p.tolist() for p in calibration[:SEARCH_PROMPTS]]
    for attention, precision, draft in EDGEEXIT_BUILDS:
        name = f"edgeexit {attention} {precision}" + (f" +{draft} draft" if draft else "")
        bundle = builds.root / name.replace(" ", "-").replace("+", "")
        with builds.step(name):
            export_decoder(model, bundle, tokenizer=text.BYTES, attention=attention,
                           precision=precision, prompts=ids if precision != "fp32" else (),
                           draft=draft)  # fmt: skip
        with builds.step(f"{name} settings ({args.calibrate})"):
            options, thresholds, record = choose_settings(bundle, calibration, args)
        settings[name] = record
        gen = Generator(bundle, threads=args.threads)
        modes = {"full": {}, "self-spec": {"mode": "self-speculative", "speculative": options}}
        if draft:  # its full and early-exit decoding are the fused fp32 bundle's
            del modes["full"]
        elif thresholds is not None:
            modes["early-exit"] = {"mode": "early-exit", "thresholds": thresholds}
        else:
            why = ("--calibrate search chooses no thresholds" if args.calibrate == "search"
                   else "calibrate-generation left every exit closed")  # fmt: skip
            builds.skip(f"{name} early-exit", why)
        for mode, kwargs in modes.items():
            calls[f"{name} {mode}"] = edgeexit_call(gen, timed, args.tokens, kwargs)
    return calls, settings


def edgeexit_call(gen: Generator, prompts, new: int, kwargs: dict) -> Call:
    return lambda n: gen.generate(prompts[n], max_new_tokens=new, **kwargs)


def choose_settings(bundle: Path, prompts, args) -> tuple[SpeculativeOptions, tuple | None, dict]:
    """(self-speculative options, early-exit thresholds or None, what was chosen and how)."""
    if args.calibrate == "generation":
        report = calibrate_generation(bundle, prompts, max_new_tokens=args.tokens,
                                      threads=args.threads)  # fmt: skip
        thresholds = report.early_exit
        open_exit = any(math.isfinite(t) for t in thresholds)
        record = {k: v for k, v in report.to_json().items() if k != "tried"}
        for line in report.lines():
            log(f"  {line}")
        return (
            SpeculativeOptions(**report.self_speculative),
            thresholds if open_exit else None,
            record,
        )
    gen = Generator(bundle, threads=args.threads)
    grid = {
        (k, gamma): SpeculativeOptions(k=k, gamma=gamma)
        for k in range(1, gen.num_exits) for gamma in SEARCH_GAMMAS
    }  # fmt: skip
    some = prompts[:SEARCH_PROMPTS]
    _, seconds = alternating_calls(
        {key: edgeexit_call(gen, some, args.tokens, {"mode": "self-speculative",
                                                    "speculative": o})
         for key, o in grid.items()},
        len(some), rounds=2, warmup=1,
    )  # fmt: skip
    best = min(seconds, key=lambda key: seconds[key].sum())
    log(f"  self-speculative: k={best[0]}, gamma={best[1]} (fastest of {len(grid)} settings)")
    tried = [{"k": k, "gamma": g, "seconds": float(s.sum())} for (k, g), s in seconds.items()]
    return grid[best], None, {"self_speculative": asdict(grid[best]), "searched": tried}


# onnxruntime-genai -------------------------------------------------------------------------


def genai_calls(hf_dir: Path, prompts, args, builds: Builds) -> dict[str, Call]:
    og = import_peer("onnxruntime_genai", "genai", builds)
    if og is None:
        return {}
    calls = {}
    for precision in GENAI_PRECISIONS:
        name = f"genai {precision}"
        out = builds.root / name.replace(" ", "-")
        with builds.step(name):
            ok = run_tool(
                [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                 "-o", str(out), "-p", precision, "-e", "cpu",
                 "-c", str(builds.root / "genai-cache")],
                out.with_suffix(".log"), name, builds,
            )  # fmt: skip
        if ok:
            set_genai_threads(out / "genai_config.json", args.threads)
            calls[name] = genai_call(og, og.Model(str(out)), prompts, args.tokens)
    return calls


def set_genai_threads(config: Path, threads: int) -> None:
    doc = json.loads(config.read_text())
    options = doc["model"]["decoder"].setdefault("session_options", {})
    options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    config.write_text(json.dumps(doc, indent=4))


def genai_call(og, model, prompts, new: int) -> Call:
    """Greedy, the prompt's ids appended, until end of text (its config's eos, 256) or
    ``new`` tokens (``max_length`` = prompt + new)."""

    def call(n: int) -> list[int]:
        prompt = np.asarray(prompts[n], dtype=np.int32)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt[None])
        out: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out

    return call


# llama.cpp ---------------------------------------------------------------------------------


def llama_cpp_calls(hf_dir: Path, prompts, config, args, builds: Builds) -> dict[str, Call]:
    llama_cpp = import_peer("llama_cpp", "llama.cpp", builds)
    if llama_cpp is None:
        return {}
    src = args.llama_cpp_src
    if src is None or not (src / "convert_hf_to_gguf.py").is_file():
        builds.skip("llama.cpp", f"no llama.cpp source with convert_hf_to_gguf.py at {src} "
                                 "(--llama-cpp-src)")  # fmt: skip
        return {}
    files = build_ggufs(src, hf_dir, builds)
    extra = extra_buffers_work(files, builds)
    calls = {}
    for kind, path in files.items():
        for flash in (True, False):
            with default_model_params(llama_cpp, use_extra_bufts=extra):
                llm = llama_cpp.Llama(
                    str(path), n_threads=args.threads, n_threads_batch=args.threads,
                    n_ctx=config.max_positions, n_batch=LLAMA_BATCH, flash_attn=flash,
                    logits_all=False, verbose=False,
                )  # fmt: skip
            name = f"llama.cpp {kind} {'flash' if flash else 'no-flash'}"
            calls[name] = llama_call(llm, prompts, args.tokens, config.eos_token_ids)
    return calls


def build_ggufs(src: Path, hf_dir: Path, builds: Builds) -> dict[str, Path]:
    """f32 and f16 by llama.cpp's converter, q8_0 by its quantizer from the f32 file."""
    files: dict[str, Path] = {}
    for kind in ("f32", "f16", "q8_0"):
        path = builds.root / f"llama.cpp-{kind}.gguf"
        if kind == "q8_0":
            if "f32" not in files:
                break
            tool = [QUANTIZE, str(files["f32"]), str(path)]
        else:
            tool = [CONVERT, str(src), str(hf_dir), "--outtype", kind, "--outfile", str(path)]
        name = f"llama.cpp {kind}"
        with builds.step(name):
            if run_tool([sys.executable, "-c", *tool], path.with_suffix(".log"), name, builds):
                files[kind] = path
    return files


def extra_buffers_work(files: dict[str, Path], builds: Builds) -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types (AMX on a CPU that
    has it: q8_0 only, on x86), probed in a child process: on a VM whose CPU reports AMX,
    llama.cpp 0.3.36's AMX path died with SIGSEGV on a prompt of more than one token. Where
    it dies, every llama.cpp build runs without them (said once, and in the JSON)."""
    if "q8_0" not in files:
        return True
    probe = subprocess.run([sys.executable, "-c", PROBE, str(files["q8_0"])],
                           capture_output=True, check=False)  # fmt: skip
    if probe.returncode == 0:
        return True
    builds.skipped["llama.cpp extra buffer types"] = (
        f"a q8_0 prompt died with exit {probe.returncode} with them (AMX repacking): "
        "every llama.cpp build runs with use_extra_bufts=false"
    )
    log(f"llama.cpp: {builds.skipped['llama.cpp extra buffer types']}")
    return False


@contextlib.contextmanager
def default_model_params(llama_cpp, **fields) -> Iterator[None]:
    """llama-cpp-python's ``Llama`` takes no ``use_extra_bufts``: while one loads, the
    default model parameters it starts from have ``fields`` set."""
    module = llama_cpp.llama_cpp
    default = module.llama_model_default_params

    def changed():
        params = default()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    module.llama_model_default_params = changed
    try:
        yield
    finally:
        module.llama_model_default_params = default


def llama_call(llm, prompts, new: int, eos: Sequence[int]) -> Call:
    """Greedy (temperature 0, no repeat penalty) from a reset context, until end of text
    or ``new`` tokens."""

    def call(n: int) -> list[int]:
        llm.reset()  # why: generate() would reuse a previous prompt's matching prefix
        out: list[int] = []
        for token in llm.generate(prompts[n].tolist(), temp=0.0, repeat_penalty=1.0):
            out.append(int(token))
            if token in eos or len(out) == new:
                break
        return out

    return call


# shared ------------------------------------------------------------------------------------


def import_peer(module: str, name: str, builds: Builds):
    try:
        return importlib.import_module(module)
    except ImportError as err:  # an optional peer: the benchmark goes on without it
        builds.skip(name, f"not importable ({err}); see this script's docstring to install")
        return None


def run_tool(command: list[str], log_path: Path, name: str, builds: Builds) -> bool:
    """Run a peer's build tool, its output to ``log_path``; False (said once) if it failed."""
    with log_path.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        builds.skip(name, f"build failed (exit {done.returncode}): {tail[0][:200]}")
    return done.returncode == 0


def write_llama(model: MultiExitDecoder, folder: Path) -> None:
    """The decoder as a transformers Llama folder, with a byte-level tokenizer (a token is
    a byte, 256 the end of text): what the peers' build tools read."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    decoder_to_llama(model).save_pretrained(folder)
    vocab = {char: byte for byte, char in enumerate(byte_characters())}
    tokenizer = Tokenizer(models.BPE(vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TEXT).save_pretrained(folder)


def byte_characters() -> list[str]:
    """GPT-2's printable character for each byte (its ByteLevel alphabet, in byte order)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b], extra = chr(256 + extra), extra + 1
    return [chars[b] for b in range(256)]


def build_bytes(root: Path) -> dict[str, int]:
    """Bytes on disk of each build (a bundle or model folder, a .gguf file)."""
    builds = [p for p in sorted(root.iterdir()) if p.suffix != ".log" and p.name != "genai-cache"]
    return {
        p.name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        for p in builds
    }


# results -----------------------------------------------------------------------------------


def tokens_of(answer) -> list[int]:
    return list(getattr(answer, "tokens", answer))


def summarize(answers: dict, seconds: dict, exit_after: Sequence[int]) -> dict:
    tokens = {name: [tokens_of(a) for a in runs] for name, runs in answers.items()}
    reference = tokens[REFERENCE]
    per_round = {name: sum(map(len, tokens[name])) / seconds[name] for name in answers}
    base = RATIO_TO if RATIO_TO in per_round else REFERENCE
    rows = {}
    for name, rates in per_round.items():
        ratios = rates / per_round[base]
        rows[name] = {
            "tokens_per_s_median": float(np.median(rates)),
            "tokens_per_s_rounds": rates.tolist(),
            "ratio": float(np.median(ratios)),
            "ratio_ci95": list(median_interval(ratios)),
            "agreement_positionwise": token_agreement(reference, tokens[name]),
            "agreement_to_first_difference": prefix_agreement(reference, tokens[name]),
            "new_tokens": sum(map(len, tokens[name])),
            **edgeexit_figures(answers[name], len(exit_after)),
        }
    return {"ratio_to": base, "rows": rows, "lossless": lossless(tokens),
            "tokens": {name: t for name, t in tokens.items()}}  # fmt: skip


def prefix_agreement(reference: Sequence[Sequence[int]], outs: Sequence[Sequence[int]]) -> float:
    """Share of the reference's positions (or the longer's) before each prompt's first
    difference."""
    same = total = 0
    for ref, out in zip(reference, outs):
        first = next(
            (i for i, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out))
        )
        same, total = same + first, total + max(len(ref), len(out))
    return same / total if total else 1.0


def edgeexit_figures(runs, num_exits: int) -> dict:
    """Acceptance rate (self-speculative) and mean exit depth (early-exit) of a mode."""
    drafted = sum(getattr(r, "drafted", 0) for r in runs)
    exits = [e for r in runs for e in getattr(r, "exits", ())]
    return {
        "acceptance_rate": sum(r.accepted for r in runs) / drafted if drafted else None,
        "mean_exit_depth": (float(np.mean(exits)) + 1) / num_exits if exits else None,
    }


def lossless(tokens: dict[str, list]) -> dict[str, dict]:
    """Per bundle: prompts whose self-speculative tokens equal its full decoding's."""
    out = {}
    for name in tokens:
        if name.endswith(" self-spec"):
            bundle = name.removesuffix(" self-spec")
            # a drafted bundle's full decoding is its model's: the undrafted one's
            full = tokens[bundle.split(" +")[0] + " full"]
            same = sum(a == b for a, b in zip(full, tokens[name]))
            out[bundle] = {"identical_prompts": same, "prompts": len(full)}
    return out


def setup(args, model, builds: Builds, settings: dict, sizes: dict) -> dict:
    versions = {"onnxruntime": ort.__version__, "torch": torch.__version__}
    for module, name in (
        ("onnxruntime_genai", "onnxruntime-genai"),
        ("llama_cpp", "llama-cpp-python"),
    ):
        with contextlib.suppress(ImportError):  # a skipped peer has no version
            versions[name] = importlib.import_module(module).__version__
    return {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "versions": versions,
        "model": args.model,
        "config": asdict(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": args.prompts, "calibration_prompts": args.calibration_prompts,
        "new_tokens": args.tokens, "rounds": args.rounds, "threads": args.threads,
        "calibrate": args.calibrate, "settings": settings,
        "build_seconds": builds.seconds, "build_bytes": sizes, "skipped": builds.skipped,
    }  # fmt: skip


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    head = (f"{doc['model']}: {doc['prompts']} prompts x {doc['new_tokens']} tokens, "
            f"{doc['rounds']} rounds, {doc['threads']} thread(s), {doc['machine']}")  # fmt: skip
    lines = [head, "",
             f"| engine | tokens/s (median) | x {doc['ratio_to']} [95 % CI] | = fp32 full "
             "(position-wise / to 1st difference) | acceptance | exit depth |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in rows.items():
        low, high = r["ratio_ci95"]
        accept = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}"
        depth = "-" if r["mean_exit_depth"] is None else f"{r['mean_exit_depth']:.0%}"
        agree = f"{r['agreement_positionwise']:.1%} / {r['agreement_to_first_difference']:.1%}"
        lines.append(f"| {name} | {r['tokens_per_s_median']:.1f} | {r['ratio']:.2f}x "
                     f"[{low:.2f}-{high:.2f}] | {agree} | {accept} | {depth} |")  # fmt: skip
    lines.append("")
    for bundle, same in doc["lossless"].items():
        word = "yes" if same["identical_prompts"] == same["prompts"] else "NO"
        lines.append(f"lossless ({bundle}: self-spec = full): {word}, "
                     f"{same['identical_prompts']}/{same['prompts']} prompts")  # fmt: skip
    for name, why in doc["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    builds = ", ".join(f"{k} {v:.0f} s" for k, v in doc["build_seconds"].items())
    lines.append(f"build times: {builds}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
