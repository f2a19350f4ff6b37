"""The exact paired test behind a certified accuracy drop (edgeexit/calibrate/paired.py):
its region is closed, its size is what it claims under every null, and it keeps its level
in simulation."""

import numpy as np
import pytest

from edgeexit.calibrate.paired import drop_test, region, region_size, tango_z


def test_the_region_only_grows_with_gains_and_shrinks_with_losses():
    bounds = region(300, 0.01, 1.3)
    steps = np.diff(bounds)
    assert set(np.unique(steps)) <= {0, 1}  # one loss fewer or one gain more stays in
    assert bounds[0] >= 0  # no loss, no gain: certified at 300 samples and 1 pp


def test_region_size_matches_the_multinomial_it_stands_for():
    stats = pytest.importorskip("scipy.stats")
    n, budget = 30, 0.05
    bounds = region(n, budget, 1.0)
    for q in (0.0, 0.01, 0.1, 0.3, (1 - budget) / 2):
        p = [q + budget, q, 1 - 2 * q - budget]
        exact = sum(
            stats.multinomial.pmf([a, b, n - a - b], n, p)
            for a in range(n + 1)
            for b in range(n + 1 - a)
            if a <= bounds[a + b]
        )
        assert region_size(n, budget, bounds, np.array([q]))[0] == pytest.approx(exact, abs=1e-9)


@pytest.mark.parametrize("n, budget, delta", [(100, 0.02, 0.1), (450, 0.01, 0.1), (800, 0.02, 0.2)])
def test_the_level_holds_at_every_null_in_simulation(n, budget, delta):
    test = drop_test(n, budget, delta)
    assert test.size <= delta
    rng = np.random.default_rng(0)
    for q in (0.0, 0.002, 0.02, 0.1, 0.3):
        draws = rng.multinomial(n, [q + budget, q, 1 - 2 * q - budget], size=40_000)
        rate = test.certifies_many(draws[:, 0], draws[:, 1]).mean()
        assert rate <= delta + 3 * np.sqrt(delta * (1 - delta) / 40_000)


def test_a_certified_outcome_has_a_p_value_within_the_level():
    test = drop_test(450, 0.01, 0.1)
    for losses, gains in [(0, 0), (3, 5), (10, 20), (12, 11), (30, 20)]:
        p = test.p_value(losses, gains)
        assert 0 <= p <= 1
        if test.certifies(losses, gains):
            assert p <= 0.1
    assert test.p_value(30, 20) > 0.5  # losses outnumber gains: far from certified


def test_tango_statistic_rises_with_gains_and_falls_with_losses():
    z = tango_z(np.array([10, 10, 12]), np.array([10, 12, 10]), 450, 0.01)
    assert z[1] > z[0] > z[2]
