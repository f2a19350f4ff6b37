"""The ``edgeexit`` command line. Importing a command module registers its command."""

from edgeexit.cli import commands as _commands  # noqa: F401  (registers the commands)
from edgeexit.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
