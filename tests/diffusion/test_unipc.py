"""FlowUniPC: the reference schedule, parity with diffusers step by step, one-jit loop, edits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirage_jax.diffusion.samplers import (
    SIGMA_MAX, FlowEuler, FlowUniPC, UniPCState, denoise, flow_schedule)
from mirage_jax.errors import ConfigError, InputError

# Spec 10.6: 20 steps, shift 5.
REFERENCE_TIMESTEPS = [999, 989, 978, 965, 952, 937, 920, 902, 882, 859,
                       833, 803, 768, 728, 681, 624, 555, 468, 356, 208]
SHAPE = (1, 3, 4, 4, 8)  # [B, T, h, w, C]


def _fake_model(xp, c):
    """A deterministic "model": nonlinear in x, couples the frames (so an edit of frame 0 matters)."""
    def v(x):
        return -0.7 * x + c + 0.2 * xp.sin(3.0 * x) + 0.3 * x.mean(axis=1, keepdims=True)
    return v


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32),
            rng.standard_normal(SHAPE[:1] + SHAPE[2:]).astype(np.float32))


def test_reference_schedule():
    s = FlowUniPC()
    assert (s.num_steps, s.shift, s.order) == (20, 5.0, 2)
    assert s.timesteps.dtype == np.int32 and s.timesteps.tolist() == REFERENCE_TIMESTEPS
    assert s.sigmas.dtype == np.float32 and s.sigmas.shape == (21,) and s.sigmas[-1] == 0.0
    assert np.all(np.diff(s.sigmas) < 0)
    u0 = np.float64(np.float32(0.999))
    np.testing.assert_allclose(s.sigmas[0], 5 * u0 / (1 + 4 * u0), rtol=1e-7)
    assert s.orders.tolist() == [1] + [2] * 18 + [1]  # warm-up and lower order on the final step
    with pytest.raises(ValueError):
        s.sigmas[0] = 1.0  # the cached schedule is read-only


def test_timesteps_are_truncated_not_rounded():
    """The model sees int(1000 sigma) while the update uses sigma: up to one timestep apart."""
    sigmas, timesteps = flow_schedule(20, 5.0)
    gap = 1000.0 * sigmas[:-1].astype(np.float64) - timesteps
    assert np.all(gap >= 0) and np.all(gap < 1)
    assert gap.max() > 0.5  # e.g. sigma_0 = 0.99980 -> 999, where rounding would give 1000
    assert timesteps[0] == 999 and np.round(1000 * sigmas[0]) == 1000


@pytest.mark.parametrize("kwargs", [dict(num_steps=0), dict(num_steps=2.5), dict(num_steps=True),
                                    dict(shift=0.0), dict(shift=float("nan")), dict(order=0)])
def test_bad_config(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        FlowUniPC(**kwargs)


def test_bad_inputs():
    s = FlowUniPC(num_steps=2)
    x = jnp.zeros(SHAPE)
    state = s.init(x)
    with pytest.raises(InputError, match="velocity"):
        s.step(state, x, jnp.zeros(SHAPE[:-1]))
    with pytest.raises(InputError, match="x0_history"):
        s.step(s.init(jnp.zeros((2, 2))), x, x)
    with pytest.raises(InputError, match="floating"):
        s.step(state, x.astype(jnp.int32), x)
    for _ in range(2):
        x, state = s.step(state, x, x)
    with pytest.raises(InputError, match="outside the schedule"):
        s.step(state, x, x)  # a concrete step index past the end raises
    # A traced index cannot raise: past the end the result is NaN, never a clamped step.
    out, _ = jax.jit(s.step)(state, x, x)
    assert bool(jnp.all(jnp.isnan(out)))


def test_sampler_is_static_and_hashable():
    assert hash(FlowUniPC()) == hash(FlowUniPC(20, 5.0, 2)) and FlowUniPC() != FlowUniPC(order=1)
    assert FlowUniPC() != FlowEuler()
    state = FlowUniPC().init(jnp.zeros(SHAPE, jnp.bfloat16))
    assert isinstance(state, UniPCState) and state.x0_history.shape == (2, *SHAPE)
    assert len(jax.tree_util.tree_leaves(state)) == 3


def _python_loop(sampler, model, x, edit=None):
    state = sampler.init(x)
    for i in range(sampler.num_steps):
        x, state = sampler.step(state, x, model(x))
        if edit is not None:
            x = edit(x, i)
    return x


def test_one_jit_loop_equals_python_loop_and_edits_are_respected():
    x, c, clean = _inputs()
    model = _fake_model(jnp, c)
    sampler = FlowUniPC(num_steps=8)

    def reimpose(x, i):
        return x.at[:, 0].set(clean)

    run = jax.jit(denoise, static_argnums=(0, 1), static_argnames="after_step")
    seen = []
    fused = run(sampler, lambda x, t: (seen.append(t), model(x))[1], jnp.asarray(x), after_step=reimpose)
    assert len(seen) == 1  # one trace: the loop is a fori_loop, not unrolled in Python
    looped = _python_loop(sampler, model, jnp.asarray(x), reimpose)
    np.testing.assert_allclose(fused, looped, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fused[:, 0], clean)
    free = _python_loop(sampler, model, jnp.asarray(x))
    # The edit reaches the other frames through the model (frame coupling) and the x0 history.
    assert float(jnp.abs(free[:, 1:] - looped[:, 1:]).max()) > 1e-2


def test_timestep_follows_the_state():
    s = FlowUniPC()
    x = jnp.zeros(SHAPE)
    state = s.init(x)
    got = []
    for _ in range(s.num_steps):
        got.append(int(s.timestep(state)))
        np.testing.assert_equal(float(s.sigma(state)), float(s.sigmas[len(got) - 1]))
        x, state = s.step(state, x, jnp.ones(SHAPE))
    assert got == REFERENCE_TIMESTEPS


def _gaussian_error(sampler_cls, num_steps, mu=0.3, s=1.0):
    """Max error of a sampler on data N(mu, s^2), whose exact flow map is x0 = mu + s z."""
    smp = sampler_cls(num_steps, 1.0)
    z = jnp.linspace(-2.0, 2.0, 9)
    s0 = float(smp.sigmas[0])
    x = (1 - s0) * mu + math.sqrt((1 - s0) ** 2 * s**2 + s0**2) * z  # the exact marginal at sigma_0
    state = smp.init(x)
    for i in range(num_steps):
        sig = float(smp.sigmas[i])
        a = 1.0 - sig
        x0 = mu + a * s**2 / (a**2 * s**2 + sig**2) * (x - a * mu)  # E[x0 | x]
        x, state = smp.step(state, x, (x - x0) / sig)
    return float(jnp.abs(x - (mu + s * z)).max())


def test_converges_at_higher_order_than_euler():
    uni = [_gaussian_error(FlowUniPC, n) for n in (10, 20, 40)]
    eul = [_gaussian_error(FlowEuler, n) for n in (10, 20, 40)]
    assert 1.7 < eul[0] / eul[1] < 2.3 and 1.7 < eul[1] / eul[2] < 2.3  # first order
    assert uni[0] / uni[1] > 3.5 and uni[1] / uni[2] > 3.5  # at least second order
    assert uni[2] < eul[2] / 10


def _diffusers_scheduler(order, sigmas=True, num_steps=20):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, use_flow_sigmas=True, prediction_type="flow_prediction",
        flow_shift=5.0, solver_order=order, solver_type="bh2", predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero")
    if sigmas:  # the reference's grid: diffusers shifts the sigmas it is handed
        sch.set_timesteps(sigmas=np.linspace(SIGMA_MAX, 0.0, num_steps + 1)[:-1])
    else:
        sch.set_timesteps(num_steps)
    return sch


@pytest.mark.parity
def test_schedule_matches_diffusers_given_the_reference_grid():
    sch = _diffusers_scheduler(2)
    ours = FlowUniPC()
    np.testing.assert_array_equal(sch.timesteps.numpy(), ours.timesteps)  # same truncation
    np.testing.assert_array_equal(sch.sigmas.numpy(), ours.sigmas)
    # diffusers' default flow grid, linspace(1, 1/1000), is not the reference's: follow the spec.
    default = _diffusers_scheduler(2, sigmas=False)
    assert default.sigmas[0].item() > ours.sigmas[0]
    assert np.any(default.timesteps.numpy() != ours.timesteps)


@pytest.mark.parity
@pytest.mark.parametrize("order,edit", [(1, False), (2, False), (2, True), (3, False)])
def test_matches_diffusers_step_by_step(order, edit):
    """Same noise, same fake model, same edits: every step within 1e-5 of diffusers (float32)."""
    torch = pytest.importorskip("torch")
    sch = _diffusers_scheduler(order)
    ours = FlowUniPC(num_steps=20, shift=5.0, order=order)
    x, c, clean = _inputs(order)
    model_t, model_j = _fake_model(torch, torch.from_numpy(c)), _fake_model(jnp, c)
    xt, xj = torch.from_numpy(x), jnp.asarray(x)
    step = jax.jit(ours.step)
    state = ours.init(xj)
    errors = []
    for i, t in enumerate(sch.timesteps):
        assert int(t) == int(ours.timestep(state))
        xt = sch.step(model_t(xt), t, xt).prev_sample
        xj, state = step(state, xj, model_j(xj))
        if edit:  # the reference's frame-0 re-imposition, applied to both
            xt[:, 0] = torch.from_numpy(clean)
            xj = xj.at[:, 0].set(clean)
        ref = xt.numpy()
        errors.append(float(np.abs(np.asarray(xj) - ref).max() / np.abs(ref).max()))
    assert max(errors) < 1e-5, errors
    # The comparison has teeth: a first-order sampler on the same inputs is far off.
    euler = _python_loop(FlowEuler(), model_j, jnp.asarray(x),
                         (lambda x, i: x.at[:, 0].set(clean)) if edit else None)
    assert float(jnp.abs(euler - ref).max() / np.abs(ref).max()) > 1e-3
