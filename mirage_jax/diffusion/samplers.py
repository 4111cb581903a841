"""Flow-matching samplers (spec sections 5 and 10.6): multistep UniPC (the reference's) and Euler.

Both are frozen (hashable, static) dataclasses whose ``step`` is a pure function of a small state
pytree, so a whole denoising loop is one ``lax.fori_loop`` inside one jit::

    sampler = FlowUniPC(num_steps=20, shift=5.0, order=2)
    state = sampler.init(x)                                   # x: noise [B, T, h, w, C]
    def body(i, carry):
        x, state = carry
        v = model(x, sampler.timestep(state))                 # int32 timestep for the model
        x, state = sampler.step(state, x, v)
        return x.at[:, 0].set(clean_frame0), state            # edits between steps are allowed
    x, _ = jax.lax.fori_loop(0, sampler.num_steps, body, (x, state))

(:func:`denoise` is that loop.) The latents are passed in at every step and the state keeps only
the solver's history, so a caller may change ``x`` between steps, as the reference's frame-0
re-imposition does; the update then sees the edited ``x`` exactly as the reference's scheduler does.

Schedule (:func:`flow_schedule`, the reference's ``FlowUniPCMultistepScheduler.set_timesteps``):
``sigma_i = shift(linspace(0.999, 0, N + 1)[:-1])`` with 0 appended, the model called with
``timestep_i = int(1000 sigma_i)`` (truncated) and the update using the float32 ``sigma_i``. 20 steps
with shift 5 give timesteps 999, 989, 978, ..., 468, 356, 208. diffusers'
``UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=s)``
builds exactly this schedule (and truncates the same way) when handed the unshifted sigmas,
``set_timesteps(sigmas=linspace(0.999, 0, N + 1)[:-1])``; its default schedule instead starts from
``linspace(1, 1/1000, N + 1)[:-1]`` (first sigma 1 - 1e-6; 20 steps, shift 5: timesteps 999, 989,
978, 965, 952, 937, 921, ..., 470, 359, 211), so its default timesteps and sigmas differ from the
reference's; we follow the reference (tests/diffusion/test_unipc.py checks both facts). Note that
the model's ``timestep / 1000`` is up to 1/1000 below the ``sigma`` of the update (truncation).

UniPC ("bh2", data prediction ``x0 = x - sigma v``, UniC corrector from the second step on, lower
order on the final step, warm-up from order 1) is written here as per-step *linear combinations*:
every UniPC update is ``a x + sum_k b_k m_k`` of the sample and the stored x0 predictions with
coefficients that depend only on the (static) sigma schedule. We compute those coefficient tables
once in float64 NumPy from the float32 sigmas (the reference computes them in float32 torch on
every step), and a traced step index only selects a table row, so there is no Python branching on
the step and no ``inf`` / ``nan`` path at the final sigma 0 (its ``lambda = log(alpha / sigma)``
is infinite; the order-1 limit ``x_next = x0`` is taken in closed form). Written by hand because
no maintained JAX library implements the flow-matching UniPC of the reference; the algorithm is
the UniPC paper's (Zhao et al. 2023) B(h) = e^h - 1 variant as diffusers implements it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.diffusion.flow import NUM_TRAIN_TIMESTEPS, x0_from_velocity
from mirage_jax.errors import ConfigError, InputError

__all__ = [
    "SIGMA_MAX",
    "flow_schedule",
    "FlowUniPC",
    "FlowEuler",
    "UniPCState",
    "EulerState",
    "denoise",
]

# The reference's first unshifted sigma: 1 - 1/1000 rounded to float32 (its scheduler reads it
# back from a float32 tensor, 0.9990000128746033), then shifted in float64.
SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def flow_schedule(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference's sampling schedule: ``(sigmas f32[N + 1], timesteps int32[N])``.

    ``sigmas[:N] = shift u / (1 + (shift - 1) u)`` for ``u = linspace(SIGMA_MAX, 0, N + 1)[:-1]``,
    ``sigmas[N] = 0``; ``timesteps = int(1000 sigma)`` truncated, from the float64 sigmas.
    The shift is computed here in float64 NumPy, not with :func:`..flow.shift_sigma` (float32 JAX),
    because the reference does so and a float32 shift moves some sigmas by one ulp.
    """
    _check_steps_shift(num_steps, shift)
    u = np.linspace(SIGMA_MAX, 0.0, num_steps + 1)[:-1]
    sig = shift * u / (1.0 + (shift - 1.0) * u)
    timesteps = (sig * NUM_TRAIN_TIMESTEPS).astype(np.int32)  # truncation toward zero, as torch int64
    sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
    return sigmas, timesteps


def _check_steps_shift(num_steps, shift) -> None:
    if not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool) or num_steps < 1:
        raise ConfigError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if (not isinstance(shift, numbers.Real) or isinstance(shift, bool) or not math.isfinite(shift)
            or not shift > 0):
        raise ConfigError(f"shift must be a finite number > 0, got {shift!r}")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclasses.dataclass(frozen=True)
class _FlowSampler:
    """Shared schedule and step bookkeeping of the flow samplers (hashable: usable as a static arg)."""

    num_steps: int = 20
    shift: float = 5.0

    def __post_init__(self):
        _check_steps_shift(self.num_steps, self.shift)

    @functools.cached_property
    def _schedule(self) -> tuple[np.ndarray, np.ndarray]:
        sigmas, timesteps = flow_schedule(self.num_steps, self.shift)
        return _readonly(sigmas), _readonly(timesteps)

    @property
    def sigmas(self) -> np.ndarray:
        """f32[num_steps + 1]: the noise levels, decreasing, last 0 (read-only)."""
        return self._schedule[0]

    @property
    def timesteps(self) -> np.ndarray:
        """int32[num_steps]: the model's timestep at each step, ``int(1000 sigma_i)`` (read-only)."""
        return self._schedule[1]

    def timestep(self, state) -> jax.Array:
        """int32[]: the model's timestep for the next ``step`` of ``state`` (traced index is fine)."""
        return jnp.asarray(self.timesteps)[state.step]

    def sigma(self, state) -> jax.Array:
        """f32[]: the noise level of the sample the next ``step`` of ``state`` expects."""
        return jnp.asarray(self.sigmas)[state.step]

    def _check_inputs(self, state, x, velocity) -> None:
        """Shape / dtype checks, and a concrete step index past the schedule raises. A traced index
        cannot raise: past the end ``step`` returns NaN latents instead (never a clamped step)."""
        x, velocity = jnp.asarray(x), jnp.asarray(velocity)
        if not jnp.issubdtype(x.dtype, jnp.floating) or not jnp.issubdtype(velocity.dtype, jnp.floating):
            raise InputError(f"x and velocity must be floating, got {x.dtype} and {velocity.dtype}")
        if x.shape != velocity.shape:
            raise InputError(f"velocity {tuple(velocity.shape)} must have the shape of x {tuple(x.shape)}")
        if jnp.shape(state.step) != ():
            raise InputError(f"state.step must be a scalar, got shape {jnp.shape(state.step)}")
        try:
            step = int(state.step)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
            return
        if not 0 <= step < self.num_steps:
            raise InputError(f"state.step = {step} is outside the schedule's {self.num_steps} steps")

    def _poison_past_end(self, state, x_next):
        return jnp.where(state.step < self.num_steps, x_next, jnp.nan).astype(x_next.dtype)


class EulerState(NamedTuple):
    """State of :class:`FlowEuler`: only the step index (int32[])."""

    step: jax.Array


@dataclasses.dataclass(frozen=True)
class FlowEuler(_FlowSampler):
    """First-order flow sampler on the reference schedule: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v``.

    Same interface as :class:`FlowUniPC` (``init``, ``step``, ``timesteps``, ``sigmas``).
    """

    def init(self, x) -> EulerState:
        """The state before the first step (``x`` is unused: Euler keeps no history)."""
        del x
        return EulerState(step=jnp.zeros((), jnp.int32))

    def step(self, state: EulerState, x, velocity) -> tuple[jax.Array, EulerState]:
        """One Euler step. x, velocity: [...] same shape -> (x_next [...] in x's dtype, state).

        Computed in float32 (or wider if ``x`` is).
        """
        self._check_inputs(state, x, velocity)
        sig = jnp.asarray(self.sigmas)
        i = state.step
        ct = jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)
        x_next = x.astype(ct) + (sig[i + 1] - sig[i]).astype(ct) * velocity.astype(ct)
        x_next = self._poison_past_end(state, x_next.astype(x.dtype))
        return x_next, EulerState(step=i + 1)


class UniPCState(NamedTuple):
    """State of :class:`FlowUniPC` (a pytree of the solver's history; no copy of the latents to come).

    Attributes:
      step: int32[], the index ``i`` of the next step (the sample handed in is at ``sigmas[i]``).
      x0_history: f32[order, *x.shape], the previous steps' data predictions, newest first.
      last_sample: f32[*x.shape], the (corrected) sample the previous predictor started from,
        which the UniC corrector of the next step updates.
    """

    step: jax.Array
    x0_history: jax.Array
    last_sample: jax.Array


def _lambda(sigma: float) -> float:
    """log-SNR of a flow sigma: ``log(alpha / sigma)`` with ``alpha = 1 - sigma``."""
    return math.log(1.0 - sigma) - math.log(sigma)


def _unipc_terms(sig: np.ndarray, s0: int, t: int, past: list[int], order: int, corrector: bool):
    """Coefficients of one UniP (predictor) or UniC (corrector) B(h) = e^h - 1 update.

    The update (diffusers' ``multistep_uni_{p,c}_bh_update`` with ``predict_x0``) from the sample
    ``x`` at ``sig[s0]`` to ``sig[t]``, with ``m0`` the x0 prediction at ``s0``, ``m_k`` those at
    ``past[k-1]`` and (corrector only) ``m_t`` the one at ``t``, is
    ``c_x x + c_0 m0 + sum_k c_k m_k (+ c_t m_t)``. Returns ``(c_x, c_0, [c_k], c_t)`` (floats).
    """
    sigma_t, sigma_s0 = float(sig[t]), float(sig[s0])
    alpha_t = 1.0 - sigma_t
    if sigma_t == 0.0:  # lambda_t = inf: the order-1 predictor's limit is x0 itself
        if corrector or order != 1:
            raise ConfigError("internal: only an order-1 predictor may step to sigma 0")
        return 0.0, 1.0, [], 0.0
    h = _lambda(sigma_t) - _lambda(sigma_s0)
    rks = [(_lambda(float(sig[s])) - _lambda(sigma_s0)) / h for s in past] + [1.0]
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)  # "bh2"
    h_phi_k = h_phi_1 / hh - 1.0
    factorial, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r = np.array([[rk ** (k - 1) for rk in rks] for k in range(1, order + 1)])
    if corrector:
        rhos = [0.5] if order == 1 else list(np.linalg.solve(r, np.array(b)))
    elif order == 1:
        rhos = []
    else:
        rhos = [0.5] if order == 2 else list(np.linalg.solve(r[:-1, :-1], np.array(b[:-1])))
    # x_t = sigma_t/sigma_s0 x - alpha_t h_phi_1 m0 - alpha_t B_h (sum_k rho_k (m_k - m0) / r_k
    #       [+ rho_last (m_t - m0)]), expanded into one coefficient per term.
    scale = -alpha_t * b_h
    c_k = [scale * rho / rk for rho, rk in zip(rhos, rks[:-1])]
    c_t = scale * rhos[-1] if corrector else 0.0
    c_0 = -alpha_t * h_phi_1 - sum(c_k) - c_t
    return sigma_t / sigma_s0, c_0, c_k, c_t


@dataclasses.dataclass(frozen=True)
class FlowUniPC(_FlowSampler):
    """Multistep UniPC for flow matching, the reference's sampler (spec 10.6).

    ``order`` 2 (the reference), "bh2", predicting ``x0 = x - sigma v``; the UniC corrector runs
    from the second step on; the order warms up from 1 and drops on the final step (required, as
    the final sigma is 0); step ``i`` calls the model at ``timesteps[i]`` and moves the sample from
    ``sigmas[i]`` to ``sigmas[i + 1]``. Matches diffusers' ``UniPCMultistepScheduler`` (flow sigmas,
    ``flow_prediction``, bh2, ``lower_order_final``) step by step to float32 rounding.
    """

    order: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.order, numbers.Integral) or isinstance(self.order, bool) or self.order < 1:
            raise ConfigError(f"order must be an int >= 1, got {self.order!r}")

    @property
    def orders(self) -> np.ndarray:
        """int[num_steps]: the predictor order of each step, ``min(order, i + 1, N - i)``."""
        n = self.num_steps
        return np.array([min(self.order, i + 1, n - i) for i in range(n)])

    @functools.cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """f32 coefficient tables, one row per step.

        corrector [N, order + 3]: ``x_c = c[0] x + c[1] last_sample + c[2] m_t + sum_k c[3+k] hist[k]``
        (row 0: ``x_c = x``, no corrector yet). predictor [N, order + 1]:
        ``x_next = p[0] x_c + p[1] m_t + sum_k p[2+k] hist[k]``. ``hist`` is the state's x0
        history before this step (``hist[0]`` is the previous step's), ``m_t`` this step's x0.
        """
        n, q, sig, orders = self.num_steps, self.order, self.sigmas, self.orders
        corr = np.zeros((n, q + 3))
        pred = np.zeros((n, q + 1))
        corr[0, 0] = 1.0
        for i in range(n):
            if i > 0:
                p = int(orders[i - 1])  # the corrector's order is the previous predictor's
                c_x, c_0, c_k, c_t = _unipc_terms(sig, i - 1, i, [i - 1 - k for k in range(1, p)], p, True)
                corr[i, 1], corr[i, 2], corr[i, 3] = c_x, c_t, c_0
                corr[i, 4:4 + len(c_k)] = c_k
            p = int(orders[i])
            c_x, c_0, c_k, _ = _unipc_terms(sig, i, i + 1, [i - k for k in range(1, p)], p, False)
            pred[i, 0], pred[i, 1] = c_x, c_0
            pred[i, 2:2 + len(c_k)] = c_k
        return _readonly(corr.astype(np.float32)), _readonly(pred.astype(np.float32))

    def init(self, x) -> UniPCState:
        """The state before the first step, for latents shaped like ``x`` ([...], any float dtype)."""
        shape = jnp.shape(x)
        return UniPCState(
            step=jnp.zeros((), jnp.int32),
            x0_history=jnp.zeros((self.order, *shape), jnp.float32),
            last_sample=jnp.zeros(shape, jnp.float32),
        )

    def step(self, state: UniPCState, x, velocity) -> tuple[jax.Array, UniPCState]:
        """One UniPC step (corrector, then predictor).

        Args:
          state: from :meth:`init` or the previous ``step``.
          x: [...] the latents at ``sigmas[state.step]`` (possibly edited since the last step).
          velocity: [...] the model's output at ``(x, timesteps[state.step])``.
        Returns:
          (x_next [...] in x's dtype, at ``sigmas[state.step + 1]``, the new state). Computed in
          float32; the history is kept in float32.
        """
        self._check_inputs(state, x, velocity)
        if state.x0_history.shape != (self.order, *jnp.shape(x)):
            raise InputError(
                f"state.x0_history {tuple(state.x0_history.shape)} does not fit x {tuple(jnp.shape(x))} "
                f"and order {self.order} (expected {(self.order, *jnp.shape(x))}); build it with init(x)"
            )
        i = state.step
        corr_table, pred_table = self._tables
        c, p = jnp.asarray(corr_table)[i], jnp.asarray(pred_table)[i]
        hist = state.x0_history
        xf = x.astype(jnp.float32)
        m_t = x0_from_velocity(xf, velocity, jnp.asarray(self.sigmas)[i])
        x_c = c[0] * xf + c[1] * state.last_sample + c[2] * m_t
        for k in range(self.order):
            x_c = x_c + c[3 + k] * hist[k]
        x_next = p[0] * x_c + p[1] * m_t
        for k in range(self.order - 1):
            x_next = x_next + p[2 + k] * hist[k]
        new_hist = jnp.concatenate([m_t[None], hist[:-1]], axis=0)
        x_next = self._poison_past_end(state, x_next.astype(x.dtype))
        return x_next, UniPCState(step=i + 1, x0_history=new_hist, last_sample=x_c)


def denoise(sampler, velocity_fn: Callable, x, *, after_step: Callable | None = None) -> jax.Array:
    """The whole sampling loop as one ``lax.fori_loop`` (jit it, with ``sampler`` static).

    Args:
      sampler: a :class:`FlowUniPC` or :class:`FlowEuler`.
      velocity_fn: ``(x [...], timestep int32[]) -> velocity [...]``, the model call.
      x: [...] the initial noise (at ``sampler.sigmas[0]``).
      after_step: optional ``(x_next [...], i int32[]) -> x [...]`` applied after every step, e.g.
        re-imposing the clean frame 0 (the reference does it after every step, the last included).
    Returns:
      [...] the sample after ``sampler.num_steps`` steps, in x's dtype.
    """

    def body(i, carry):
        x, state = carry
        v = velocity_fn(x, sampler.timestep(state))
        x, state = sampler.step(state, x, v)
        if after_step is not None:
            x = after_step(x, i)
        return x, state

    x = jnp.asarray(x)
    x, _ = jax.lax.fori_loop(0, sampler.num_steps, body, (x, sampler.init(x)))
    return x
