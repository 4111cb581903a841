"""Rectified-flow helpers (spec 10.5): shift, sigma sampling, noising, targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirage_jax.diffusion import flow
from mirage_jax.errors import ConfigError, InputError


def test_shift_sigma_values():
    u = jnp.array([0.0, 0.25, 0.5, 1.0])
    s = np.asarray(flow.shift_sigma(u, 5.0))
    np.testing.assert_allclose(s, [0.0, 1.25 / 2.0, 2.5 / 3.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(flow.shift_sigma(u, 1.0)), np.asarray(u))
    dense = np.asarray(flow.shift_sigma(jnp.linspace(0, 1, 101), 5.0))
    assert np.all(np.diff(dense) > 0)
    with pytest.raises(ConfigError, match="shift"):
        flow.shift_sigma(u, 0.0)


def test_sample_sigmas_distribution():
    s = np.asarray(flow.sample_sigmas(jax.random.key(0), (200, 500), 5.0))
    assert s.shape == (200, 500) and s.dtype == np.float32 and s.min() >= 0 and s.max() < 1
    # E[5u / (1 + 4u)] for u ~ U(0, 1) = 5/4 (1 - ln 5 / 4)
    assert abs(s.mean() - 1.25 * (1 - np.log(5) / 4)) < 5e-3
    # Independent per sample and frame: two rows differ.
    assert not np.array_equal(s[0], s[1])


def test_noise_target_and_inverse():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.normal(k1, (2, 3, 4, 4, 5))
    eps = jax.random.normal(k2, x0.shape)
    sigma = jax.random.uniform(k3, (2, 3)).at[:, 0].set(0.0)
    xt = flow.add_noise(x0, eps, sigma)
    np.testing.assert_array_equal(np.asarray(xt[:, 0]), np.asarray(x0[:, 0]))  # sigma 0 stays clean
    want = (1 - np.asarray(sigma))[..., None, None, None] * np.asarray(x0) + np.asarray(sigma)[..., None, None, None] * np.asarray(eps)
    np.testing.assert_allclose(np.asarray(xt), want, rtol=1e-6, atol=1e-6)
    v = flow.velocity_target(x0, eps)
    np.testing.assert_allclose(np.asarray(flow.x0_from_velocity(xt, v, sigma)), np.asarray(x0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(flow.sigma_to_timestep(sigma)), 1000 * np.asarray(sigma), rtol=1e-6)
    with pytest.raises(InputError, match="leading axes"):
        flow.add_noise(x0, eps, sigma[:, :2])
    with pytest.raises(InputError, match="same shape"):
        flow.add_noise(x0, eps[:, :2], sigma)
