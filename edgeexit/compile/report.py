"""What compiling a bundle for a target did: its precision, ONNX versions, and every exit's
accuracy against fp32. Renders itself as a rich table and serializes into the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class ExitAccuracy:
    """One exit on the calibration data: fp32 vs compiled (fractions in [0, 1]; for exits
    that give tensors, mean PSNRs in dB, and ``drop`` in dB)."""

    exit_index: int
    reference_accuracy: float
    compiled_accuracy: float
    mean_score_shift: float  # mean |score_fp32 - score_compiled|: thresholds move with it

    @property
    def drop(self) -> float:
        """Accuracy lost, a fraction (negative: the compiled exit does better)."""
        return self.reference_accuracy - self.compiled_accuracy

    @property
    def drop_pp(self) -> float:
        """Accuracy lost, in percentage points (negative: the compiled exit does better)."""
        return (self.reference_accuracy - self.compiled_accuracy) * 100


@dataclass(frozen=True)
class CompileReport:
    target: str
    precision: str
    method: str  # none | fp16 | int8-static-qdq | int8-dynamic-matmul
    ir_version: int
    opset: int
    reference: str  # labels | fp32 predictions | none (no calibration data)
    samples: int
    exits: tuple[ExitAccuracy, ...]
    kernels: str = ""  # how the check ran: this host's kernels, or quantization simulated

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "precision": self.precision,
            "method": self.method,
            "ir_version": self.ir_version,
            "opset": self.opset,
            "accuracy_reference": self.reference,
            "accuracy_kernels": self.kernels,
            "samples": self.samples,
            "exits": [self._exit_json(e) for e in self.exits],
        }

    def _exit_json(self, e: ExitAccuracy) -> dict[str, Any]:
        if self._psnr:  # (ExitAccuracy holds the mean PSNRs, dB)
            figures = {"fp32_psnr_db": round(e.reference_accuracy, 4),
                       "psnr_db": round(e.compiled_accuracy, 4),
                       "drop_db": round(e.drop, 4)}  # fmt: skip
        else:
            figures = {"fp32_accuracy": round(e.reference_accuracy, 6),
                       "accuracy": round(e.compiled_accuracy, 6),
                       "drop_pp": round(e.drop_pp, 4)}  # fmt: skip
        return {"exit": e.exit_index, **figures, "mean_score_shift": round(e.mean_score_shift, 6)}

    @property
    def _psnr(self) -> bool:
        """The check measured PSNR (exits that give tensors), not accuracy."""
        return self.reference.startswith("PSNR")

    def _caption(self) -> str:
        if not self.exits:
            return "no calibration data: accuracy NOT checked"
        if self._psnr:
            how = f", {self.kernels}" if self.kernels else ""
            return f"mean PSNR against the targets on {self.samples} calibration samples{how}"
        how = f", {self.kernels}" if self.kernels else ""
        return f"accuracy vs {self.reference} on {self.samples} calibration samples{how}"

    def __rich__(self) -> Table | str:
        if self.precision == "fp32":
            return (
                f"fp32 bundle for {self.target}: IR {self.ir_version}, opset {self.opset} "
                "(within the target's limits)"
            )
        table = Table(
            title=f"{self.precision} bundle for {self.target} "
            f"(IR {self.ir_version}, opset {self.opset}, {self.method})",
            caption=self._caption(),
        )
        drop = "drop (dB)" if self._psnr else "drop (pp)"
        for col in ("exit", "fp32", self.precision, drop, "score shift"):
            table.add_column(col, justify="right")
        for e in self.exits:
            if self._psnr:
                figures = (f"{e.reference_accuracy:.2f} dB", f"{e.compiled_accuracy:.2f} dB",
                           f"{e.drop:+.3f}")  # fmt: skip
            else:
                figures = (f"{e.reference_accuracy:.1%}", f"{e.compiled_accuracy:.1%}",
                           f"{e.drop_pp:+.2f}")  # fmt: skip
            table.add_row(str(e.exit_index), *figures, f"{e.mean_score_shift:.4f}")
        return table
