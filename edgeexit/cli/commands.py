"""Every command module, imported once so their ``@command`` decorators register them.

Command modules must not import torch, onnx or onnxsim at module level: the device CLI
(`run`, `profile`, `bench`, `inspect`, `targets`) has to work with only the runtime installed.
"""

from edgeexit.cli import (
    bench,  # noqa: F401
    calibrate,  # noqa: F401
    calibrate_generation,  # noqa: F401
    compile,  # noqa: F401
    demo,  # noqa: F401
    export,  # noqa: F401
    generate,  # noqa: F401
    inspect,  # noqa: F401
    profile,  # noqa: F401
    run,  # noqa: F401
    serve,  # noqa: F401
    split,  # noqa: F401
    targets,  # noqa: F401
)
from edgeexit.cli.core import app

__all__ = ["app"]
