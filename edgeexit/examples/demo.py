"""The end-to-end walk behind ``edgeexit demo``: a model, a bundle, a device profile, calibrated
thresholds and a benchmark, in one call.

With no model given it trains a three-exit CNN on the bundled 8x8 digits with noise of
random strength; with ``DemoOptions.model`` it exports the user's checkpoint and uses their
data instead. Each later stage reuses the library that backs its own command (export,
``profile_bundle``, ``calibrate_bundle``, ``bench_bundle``), so the demo shows exactly what
the CLI does step by step. ``DemoReport`` renders the result: full model vs calibrated bundle,
the exit histogram, energy with its source, and the files written (Pareto front PNG included).
``QUICK`` trains and profiles less, for a run of well under a minute.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeexit import files
from edgeexit.budget import Budget
from edgeexit.bundle import read_manifest, thresholds_json
from edgeexit.calibrate.pipeline import CalibrateOptions, calibrate_bundle
from edgeexit.calibrate.report import CalibrationReport
from edgeexit.data import load_data
from edgeexit.energy import MODELED, modeled_energy_mj
from edgeexit.errors import InputError, OutputError
from edgeexit.examples.demo_render import render_demo  # rich layout kept apart
from edgeexit.examples.digits import add_noise, load_digits, noisy_copies
from edgeexit.examples.threads import one_torch_thread
from edgeexit.measure.bench import BenchOptions, BenchReport, bench_bundle
from edgeexit.measure.profiling import profile_bundle
from edgeexit.progress import Progress, or_silent
from edgeexit.targets import load_target

EPOCHS, PROFILE_REPEATS = 6, 100
QUICK = {"epochs": 2, "profile_repeats": 20}  # DemoOptions', for --quick


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs on and what it aims for.

    ``model``: a checkpoint from ``edgeexit.save`` (None trains the digits example);
    ``data``: its calibration data (.npz, ``x`` + labels ``y``), required with ``model``;
    ``test_data``: held-out data for the benchmark (default: ``data``).
    Budget: ``target_latency_ms`` if given, else ``max_accuracy_drop``.
    ``out_dir`` must be new, an empty folder, or an earlier demo's folder.
    """

    out_dir: Path = Path("demo-out")
    model: Path | None = None
    data: Path | None = None
    test_data: Path | None = None
    epochs: int = EPOCHS
    max_accuracy_drop: float = 0.01
    target_latency_ms: float | None = None
    target: str | None = None
    profile_repeats: int = PROFILE_REPEATS
    trust_pickle: bool = False
    factory: str | None = None  # the model's factory, for a factory checkpoint (load())
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model is not None and self.data is None:
            raise InputError("`model` needs `data`: a .npz with its calibration inputs and y")
        if self.model is None and (self.data or self.test_data or self.factory):
            raise InputError(
                "`data`/`test_data`/`factory` go with `model`; the digits demo has its own"
            )
        if self.epochs < 1 or self.profile_repeats < 1:
            raise InputError("`epochs` and `profile_repeats` must be positive integers")

    @property
    def budget(self) -> Budget:
        if self.target_latency_ms is not None:
            return Budget(latency_ms=self.target_latency_ms)
        return Budget(max_accuracy_drop=self.max_accuracy_drop)


@dataclass(frozen=True)
class DemoFiles:
    out_dir: Path
    bundle_dir: Path
    calibration_data: Path
    test_data: Path
    profile: Path
    pareto_png: Path | None  # None when matplotlib is missing
    model: Path | None = None  # the trained example's checkpoint


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured; renders itself as the demo's output."""

    files: DemoFiles
    calibration: CalibrationReport
    bench: BenchReport
    energy_mj: tuple[float | None, float | None] = (None, None)  # (full, calibrated)/sample
    trained_epochs: int | None = None
    train_loss: tuple[float, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        files = {k: None if v is None else str(v) for k, v in self.files.__dict__.items()}
        return {
            "files": files,
            "trained_epochs": self.trained_epochs,
            "budget": self.calibration.budget.to_json(),
            "thresholds": thresholds_json(self.calibration.thresholds),
            "energy_mj_per_sample": {"full": self.energy_mj[0], "calibrated": self.energy_mj[1]},
            "energy_source": self.bench.energy.label,
            "bench": self.bench.to_json(),
        }

    def __rich_console__(self, console, options):

        yield from render_demo(self)


def _energy_mj(bench: BenchReport, calibration: CalibrationReport, target) -> tuple:
    """(full model, calibrated bundle) energy per sample, both from the same source.

    Modeled: the target's active power x each column's mean latency from the same bench run
    (W x ms = mJ). Measured: the bundle's figure is bench's sensor reading; bench does not
    read the sensor for the full runs, so the device profile's measured segment energies
    stand in for the full model (the render says so).
    """

    if bench.energy == MODELED:
        power_w = load_target(target).active_power_w
        return (
            modeled_energy_mj(power_w, bench.full_mean_latency_ms),
            modeled_energy_mj(power_w, bench.mean_latency_ms),
        )
    cumulative = calibration.costs.energy_mj
    full = None if cumulative is None else float(cumulative[-1])
    return full, bench.energy_mj_per_sample


def run_demo(options: DemoOptions = DemoOptions(), *, progress: Progress | None = None):
    """Model -> bundle -> profile -> calibrate -> bench; return the DemoReport."""

    tell = or_silent(progress)
    import torch  # noqa: F401  (on a device install: fail before writing anything)

    out, made = _demo_folder(options)
    try:
        with one_torch_thread():
            if options.model is None:
                written, losses = _train_example(options, out, tell)
            else:
                written, losses = _export_user_model(options, out, tell), ()
    except BaseException:
        if made:  # nothing finished in a folder this run made: leave no empty folder behind
            _remove_if_only_marked(out)
        raise
    inputs = _load_inputs(written.bundle_dir, written.calibration_data)
    profile = profile_bundle(
        written.bundle_dir,
        options.target,
        repeats=options.profile_repeats,
        inputs=inputs,
        progress=lambda done, total: tell("profiling segments", done, total),
    )
    profile.save(written.profile)
    calibration = calibrate_bundle(
        written.bundle_dir,
        written.calibration_data,
        options.budget,
        CalibrateOptions(profile=written.profile, target=options.target),
        progress=lambda stage, done, total: tell(f"calibrating ({stage})", done, total),
    )
    written = _with_plot(written, calibration)
    bench = bench_bundle(
        written.bundle_dir,
        written.test_data,
        BenchOptions(target=options.target),
        progress=lambda done, total: tell("benchmarking", done, total),
    )
    epochs = options.epochs if options.model is None else None
    energy = _energy_mj(bench, calibration, options.target)
    return DemoReport(written, calibration, bench, energy, epochs, tuple(losses))


def _train_example(options: DemoOptions, out: Path, tell: Progress):
    """Train the three-exit digits CNN on noisy digits, save it, export it; write the data.

    The network is the one the calibration benchmark uses: a cheap first exit, then two
    heavier stages (about 0.1 ms in all here), so what early exits save is not eaten by the
    chain's per-call cost, as it is with a network of a few tens of microseconds. Each
    sample gets noise of its own strength (easy to hard); training sees two noisy copies
    of its images, calibration and test one each of theirs (module comment below)."""
    import torch

    import edgeexit
    from edgeexit.examples.models import digits_three_exit
    from edgeexit.export.train import train_multi_exit

    # Calibration and test samples are distinct images, one noisy version each: the
    # certificate assumes samples drawn independently, and noisy copies of one image are
    # not (they make a set look more varied than it is, and the guarantee overconfident).
    clean = load_digits(seed=options.seed, fractions=(0.5, 0.3))
    train = noisy_copies(clean.train, 2, seed=options.seed)
    torch.manual_seed(options.seed)
    model = digits_three_exit()
    stage = "training 3 exits, batch"
    losses = train_multi_exit(
        model,
        train.x,
        train.y,
        epochs=options.epochs,
        lr=3e-3,
        seed=options.seed,
        on_step=lambda done, total: tell(stage, done, total),
    )
    example = torch.from_numpy(train.x[:4])
    edgeexit.save(model, out / "model.pt", example_inputs=example)
    bundle = edgeexit.export(model, example, out / "bundle", progress=tell).bundle_dir
    cal = add_noise(clean.calibration, seed=options.seed + 100)  # 539 images
    test = add_noise(clean.test, seed=options.seed + 200)  # the other 360
    written = DemoFiles(
        out_dir=out,
        bundle_dir=bundle,
        calibration_data=cal.save_npz(out / "calibration.npz"),
        test_data=test.save_npz(out / "test.npz"),
        profile=out / "profile.json",
        pareto_png=None,
        model=out / "model.pt",
    )
    return written, losses


def _export_user_model(options: DemoOptions, out: Path, tell: Progress) -> DemoFiles:
    from edgeexit.export.from_file import export_file
    from edgeexit.export.options import ExportOptions

    result = export_file(
        options.model, out / "bundle", ExportOptions(), trust_pickle=options.trust_pickle,
        factory=options.factory, progress=tell,
    )  # fmt: skip
    return DemoFiles(
        out_dir=out,
        bundle_dir=result.bundle_dir,
        calibration_data=Path(options.data),
        test_data=Path(options.test_data or options.data),
        profile=out / "profile.json",
        pareto_png=None,
    )


def _load_inputs(bundle_dir: Path, data_path: Path):

    return load_data(data_path, read_manifest(bundle_dir).inputs).inputs


def _demo_folder(options: DemoOptions) -> tuple[Path, bool]:
    """The output folder, made and marked as a demo's, and whether this run made it: refused
    if it holds anything else (files.check_output), so the demo never overwrites a user's
    files."""
    out = Path(options.out_dir)
    sources = tuple(p for p in (options.model, options.data, options.test_data) if p)
    claimed = files.check_output(out, "demo", inputs=sources)
    try:  # made now if it was new: a folder that appeared since is refused, not written into
        out.mkdir(parents=True, exist_ok=claimed.existed)
        (out / files.DEMO_MARKER).write_text("a folder written by `edgeexit demo`\n")
    except OSError as err:
        raise OutputError(f"cannot write demo folder {out}: {files.os_reason(err)}") from err
    return out, not claimed.existed


def _remove_if_only_marked(out: Path) -> None:
    """Remove a demo folder this run made, if it holds only its marker."""
    with contextlib.suppress(OSError):
        if [p.name for p in out.iterdir()] == [files.DEMO_MARKER]:
            (out / files.DEMO_MARKER).unlink()
            out.rmdir()


def _with_plot(demo: DemoFiles, report: CalibrationReport) -> DemoFiles:
    if importlib.util.find_spec("matplotlib") is None:
        return demo  # the report says so; the plot is the optional `plot` extra
    path = demo.out_dir / "pareto.png"
    files.write_bytes_atomic(path, report.plot_png(), what="plot")  # in the demo's folder
    return DemoFiles(**{**demo.__dict__, "pareto_png": path})
