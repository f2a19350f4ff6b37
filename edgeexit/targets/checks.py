"""Value checks for target profiles: every problem in a profile is collected, so a user fixes
them all in one pass instead of one per run."""

from __future__ import annotations

from typing import Any

ARCHS = ("x86_64", "aarch64")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
PRECISIONS = ("fp32", "int8", "fp16")
ENERGY_METERS = ("auto", "rapl", "nvml", "ina3221", "rpi5-pmic", "modeled", "none")
# Execution providers ONNX Runtime ships under these names. A profile describes a device, not
# this host, so the check is against the names ORT knows, not the ones installed here.
KNOWN_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "XnnpackExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "NnapiExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "WebGpuExecutionProvider",
)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
# The oldest ONNX that ORT builds still in the field accept: IR 3 / opset 7 (ORT 1.0).
MIN_IR_VERSION = 3
MIN_OPSET = 7


def check_values(values: dict[str, Any]) -> list[str]:
    """Every problem with a profile's values, as short sentences (empty when it is valid)."""
    problems = [
        *_check_strings(values),
        *_check_choices(values),
        *_check_providers(values),
        *_check_numbers(values),
    ]
    if values.get("precision") == "fp16" and not set(values.get("providers", ())) & set(
        GPU_PROVIDERS
    ):
        problems.append(f"precision 'fp16' needs a GPU provider ({', '.join(GPU_PROVIDERS)})")
    return problems


def _check_strings(values: dict[str, Any]) -> list[str]:
    return [
        f"{key!r} must be a non-empty string, got {values[key]!r}"
        for key in ("name", "description")
        if not isinstance(values.get(key), str) or not values[key]
    ]


def _check_choices(values: dict[str, Any]) -> list[str]:
    problems = []
    for key, choices in (
        ("arch", ARCHS),
        ("graph_optimization", GRAPH_OPTIMIZATIONS),
        ("precision", PRECISIONS),
        ("energy_meter", ENERGY_METERS),
    ):
        if key in values and values[key] not in choices:
            problems.append(f"{key} {values[key]!r} is not one of {', '.join(choices)}")
    return problems


def _check_providers(values: dict[str, Any]) -> list[str]:
    providers = values.get("providers")
    if not isinstance(providers, list | tuple) or not providers:
        return [f"'providers' must be a non-empty list of execution providers, got {providers!r}"]
    problems = [
        f"unknown provider {p!r}; expected one of {', '.join(KNOWN_PROVIDERS)}"
        for p in providers
        if p not in KNOWN_PROVIDERS
    ]
    options = values.get("provider_options", ())
    if not isinstance(options, list | tuple) or not all(isinstance(o, dict) for o in options):
        problems.append("'provider_options' must be a list of tables, one per provider")
    elif options and len(options) != len(providers):
        problems.append(
            f"'provider_options' has {len(options)} tables for {len(providers)} providers; "
            "expected one per provider (use {} for none)"
        )
    return problems


def _check_numbers(values: dict[str, Any]) -> list[str]:
    problems = []
    threads = values.get("intra_op_threads")
    if threads is not None and (not _is_int(threads) or threads < 1):
        problems.append(f"intra_op_threads must be a positive integer, got {threads!r}")
    if "allow_spinning" in values and not isinstance(values["allow_spinning"], bool):
        problems.append(f"allow_spinning must be true or false, got {values['allow_spinning']!r}")
    for key, least in (("max_ir_version", MIN_IR_VERSION), ("max_opset", MIN_OPSET)):
        if key in values and (not _is_int(values[key]) or values[key] < least):
            problems.append(f"{key} must be an integer >= {least}, got {values[key]!r}")
    for key in ("idle_power_w", "active_power_w"):
        if key in values and (not _is_number(values[key]) or values[key] < 0):
            problems.append(f"{key} must be a number of watts >= 0, got {values[key]!r}")
    idle, active = values.get("idle_power_w", 0.0), values.get("active_power_w", 0.0)
    if _is_number(idle) and _is_number(active) and active < idle:
        problems.append(f"active_power_w ({active}) is below idle_power_w ({idle})")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
