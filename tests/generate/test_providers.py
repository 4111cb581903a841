"""NoisyDepth: seeded multiplicative log-normal noise on another provider's depth, 0 kept."""

import numpy as np
import pytest

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.generate.providers import GeometryDepth, NoisyDepth


def _depths():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.5, 8.0, (6, 64, 64)).astype(np.float32)
    d[:, :8] = 0.0  # invalid rows
    return d


def test_noisy_depth_is_lognormal_seeded_per_frame_and_keeps_invalid():
    d = _depths()
    noisy = NoisyDepth(GeometryDepth(d), rel_std=0.1, seed=3)
    idx = np.array([1, 4, 5])
    out = noisy(None, None, None, idx)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert np.all(out[:, :8] == 0) and np.all(out[:, 8:] > 0)
    log_ratio = np.log(out[:, 8:] / d[idx, 8:])
    assert abs(log_ratio.mean()) < 0.01 and log_ratio.std() == pytest.approx(0.1, rel=0.05)
    # the same frame gets the same noise whatever the batch it comes in; other frames and seeds differ
    np.testing.assert_array_equal(noisy(None, None, None, np.array([4]))[0], out[1])
    assert not np.allclose(out[0, 8:] / d[1, 8:], out[1, 8:] / d[4, 8:])
    assert not np.array_equal(NoisyDepth(GeometryDepth(d), 0.1, seed=4)(None, None, None, idx), out)
    np.testing.assert_array_equal(NoisyDepth(GeometryDepth(d), 0.0)(None, None, None, idx), d[idx])


@pytest.mark.parametrize("kw, match", [(dict(rel_std=-0.1), "rel_std"), (dict(rel_std=float("nan")), "rel_std"),
                                       (dict(rel_std=0.1, seed=-1), "seed"), (dict(rel_std=0.1, seed=1.5), "seed")])
def test_noisy_depth_bad_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        NoisyDepth(GeometryDepth(_depths()), **kw)


def test_noisy_depth_checks_the_provider_output():
    noisy = NoisyDepth(lambda *a: np.ones((2, 4, 4), np.float32), 0.1)
    with pytest.raises(InputError, match=r"shape \(2, 4, 4\) for 3 frames"):
        noisy(None, None, None, np.arange(3))
