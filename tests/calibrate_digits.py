"""The calibration tests' noisy-digits bundle: it lives in edgeexit.examples.noisy_bundle so
that benchmarks/calibration.py can import it too."""

from edgeexit.examples.noisy_bundle import (  # noqa: F401
    DigitsBundle,
    build_digits_bundle,
    digits_three_exit,
    noisy_copies,
)
