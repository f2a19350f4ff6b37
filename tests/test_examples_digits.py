"""The bundled demo data: deterministic splits and a noisy variant from easy to hard."""

import numpy as np

from edgeexit.examples import add_noise, load_digits, load_noisy_digits, make_token_task


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert np.array_equal(a.test.x, b.test.x)
    assert a.train.x.shape[1:] == (1, 8, 8) and a.train.x.dtype == np.float32
    assert a.train.y.dtype == np.int64
    assert a.train.x.min() >= 0.0 and a.train.x.max() <= 1.0
    assert len(a.train) + len(a.calibration) + len(a.test) == 1797
    assert not np.array_equal(load_digits(seed=1).test.y, a.test.y)


def test_noise_strength_varies_per_sample():
    clean = load_digits().test
    noisy = add_noise(clean, max_noise_std=0.5, seed=3)
    assert noisy.noise_std.min() < 0.1 < 0.4 < noisy.noise_std.max() <= 0.5
    err = np.abs(noisy.x - clean.x).reshape(len(clean), -1).mean(axis=1)
    assert np.corrcoef(err, noisy.noise_std)[0, 1] > 0.9
    assert np.array_equal(load_noisy_digits().test.x, load_noisy_digits().test.x)


def test_token_task_masks_padding():
    ids, mask, y = make_token_task(50, seq_len=16)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == (50, 16)
    assert np.all(ids[mask == 0] == 0) and set(np.unique(y)) <= {0, 1}
