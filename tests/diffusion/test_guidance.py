"""Classifier-free guidance: the combination, off by default (one forward), errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from mirage_jax.diffusion.guidance import cfg_velocity, guided_velocity
from mirage_jax.errors import ConfigError, InputError


def test_cfg_velocity():
    vc, vu = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
    np.testing.assert_allclose(cfg_velocity(vc, vu, 1.0), vc)
    np.testing.assert_allclose(cfg_velocity(vc, vu, 0.0), vu)
    np.testing.assert_allclose(cfg_velocity(vc, vu, 5.0), [0.5 + 5 * 0.5, -1.0 + 5 * 3.0])
    out = cfg_velocity(vc.astype(jnp.bfloat16), vu.astype(jnp.bfloat16), 3.0)
    assert out.dtype == jnp.bfloat16


def test_guided_velocity_calls():
    calls = []

    def velocity_fn(ctx):
        calls.append(ctx)
        return jnp.full((2,), float(ctx))

    np.testing.assert_allclose(guided_velocity(velocity_fn, 3.0), [3.0, 3.0])
    assert calls == [3.0]  # scale 1 (default): one forward, no negative prompt needed
    calls.clear()
    np.testing.assert_allclose(guided_velocity(velocity_fn, 3.0, 1.0, scale=2.0), [5.0, 5.0])
    assert calls == [3.0, 1.0]


def test_guidance_errors():
    with pytest.raises(InputError, match="negative prompt"):
        guided_velocity(lambda c: c, jnp.zeros(2), scale=4.0)
    with pytest.raises(ConfigError, match="scale"):
        cfg_velocity(jnp.zeros(2), jnp.zeros(2), float("inf"))
    with pytest.raises(ConfigError, match="scale"):
        cfg_velocity(jnp.zeros(2), jnp.zeros(2), jnp.float32(2.0))
    with pytest.raises(InputError, match="same shape"):
        cfg_velocity(jnp.zeros(2), jnp.zeros(3), 2.0)
