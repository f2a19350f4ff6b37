"""The calibration tests' noisy-digits bundle: it lives in edgeexit.examples.noisy_bundle so
that benchmarks/calibration.py can import it too."""

from edgeexit.examples.models import digits_three_exit  # noqa: F401
from edgeexit.examples.noisy_bundle import (  # noqa: F401
    DigitsBundle,
    build_digits_bundle,
    noisy_copies,
)
