"""The device path must not pull in the export side."""

import subprocess
import sys

FORBIDDEN = ("torch", "onnx", "onnxsim", "onnxscript")


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_import_edgeexit_and_cli_do_not_import_export_side():
    mods = imported_after(
        "import edgeexit, edgeexit.cli.commands, edgeexit.bundle, edgeexit.targets, "
        "edgeexit.generation, edgeexit.generation.calibrate"
    )
    assert not [m for m in mods if m.split(".")[0] in FORBIDDEN]
