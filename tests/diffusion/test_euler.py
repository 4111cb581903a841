"""FlowEuler: the update rule, the shared schedule, dtypes, and the one-jit loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirage_jax.diffusion.samplers import EulerState, FlowEuler, FlowUniPC, denoise
from mirage_jax.errors import InputError

SHAPE = (2, 3, 4, 4)


def test_same_schedule_as_unipc():
    e, u = FlowEuler(num_steps=12, shift=3.0), FlowUniPC(num_steps=12, shift=3.0)
    np.testing.assert_array_equal(e.sigmas, u.sigmas)
    np.testing.assert_array_equal(e.timesteps, u.timesteps)


def test_update_rule_against_numpy():
    rng = np.random.default_rng(0)
    s = FlowEuler(num_steps=5, shift=5.0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    xj, state = jnp.asarray(x), s.init(x)
    for i in range(s.num_steps):
        v = rng.standard_normal(SHAPE).astype(np.float32)
        x = x + (s.sigmas[i + 1] - s.sigmas[i]) * v
        xj, state = s.step(state, xj, jnp.asarray(v))
        np.testing.assert_allclose(xj, x, rtol=1e-6, atol=1e-6)
    assert isinstance(state, EulerState) and int(state.step) == s.num_steps


@pytest.mark.parametrize("sampler", [FlowEuler(num_steps=7), FlowUniPC(num_steps=7)],
                         ids=["euler", "unipc"])
def test_point_mass_is_reached_exactly(sampler):
    """Data = one point x*: the exact velocity (x - x*) / sigma leads every sampler to x* at sigma 0."""
    target = jnp.asarray(np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32))
    sig = jnp.asarray(sampler.sigmas)

    def velocity(x, t):
        return (x - target) / sig[jnp.argmax(jnp.asarray(sampler.timesteps) == t)]

    noise = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32))
    out = jax.jit(denoise, static_argnums=(0, 1))(sampler, velocity, noise)
    np.testing.assert_allclose(out, target, atol=1e-5)


def test_low_precision_latents_keep_their_dtype():
    s = FlowEuler(num_steps=3)
    x = jnp.ones(SHAPE, jnp.bfloat16)
    v = jnp.full(SHAPE, 0.5, jnp.bfloat16)
    out, _ = s.step(s.init(x), x, v)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), 1 + 0.5 * (s.sigmas[1] - s.sigmas[0]), rtol=1e-2)


def test_one_jit_loop_equals_python_loop():
    rng = np.random.default_rng(3)
    c = jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32))
    x = jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32))
    s = FlowEuler(num_steps=6)

    def model(x, t):
        return -0.5 * x + c * (t.astype(jnp.float32) / 1000.0)

    def edit(x, i):
        return x.at[0].set(0.0)

    run = jax.jit(denoise, static_argnums=(0, 1), static_argnames="after_step")
    fused = run(s, model, x, after_step=edit)
    state, looped = s.init(x), x
    for i in range(s.num_steps):
        looped, state = s.step(state, looped, model(looped, jnp.int32(s.timesteps[i])))
        looped = edit(looped, i)
    np.testing.assert_allclose(fused, looped, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(fused[1]).max()) > 0 and float(jnp.abs(fused[0]).max()) == 0


def test_past_the_end():
    s = FlowEuler(num_steps=1)
    x = jnp.zeros(SHAPE)
    x, state = s.step(s.init(x), x, x)
    with pytest.raises(InputError, match="outside the schedule"):
        s.step(state, x, x)
    out, _ = jax.jit(s.step)(state, x, x)
    assert bool(jnp.all(jnp.isnan(out)))
