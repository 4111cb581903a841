"""Rectified-flow schedule helpers (spec sections 4, 10.5 and 10.6), pure JAX.

Conventions (the reference's, Wan2.x): a clean latent ``x0`` and noise ``eps`` are mixed as
``x_sigma = (1 - sigma) x0 + sigma eps`` for ``sigma`` in [0, 1] (0 = clean); the model predicts
the velocity ``v = eps - x0``; the model's timestep is ``1000 sigma`` (continuous in training;
the sampler truncates it to an int, see spec 10.6). The time shift ``s`` (5 for Wan2.2 TI2V)
maps a uniform ``u`` to ``s u / (1 + (s - 1) u)``, spending more steps at high noise.

    sigma = sample_sigmas(key, (B, T), shift=5.0)     # training: u ~ U(0, 1), then shifted
    xt = add_noise(x0, eps, sigma)                    # sigma [B, T] broadcast over [B, T, h, w, C]
    loss = (model(xt, sigma_to_timestep(sigma)) - velocity_target(x0, eps)) ** 2
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mirage_jax.errors import ConfigError, InputError

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "shift_sigma",
    "sample_sigmas",
    "sigma_to_timestep",
    "add_noise",
    "velocity_target",
    "x0_from_velocity",
]

NUM_TRAIN_TIMESTEPS = 1000


def _check_shift(shift) -> None:
    if isinstance(shift, (int, float)) and not shift > 0:
        raise ConfigError(f"flow shift must be > 0, got {shift}")


def shift_sigma(u, shift: float = 5.0):
    """``shift u / (1 + (shift - 1) u)``: the time shift of a sigma (or uniform) in [0, 1].

    Maps 0 -> 0 and 1 -> 1, monotone; ``shift = 1`` is the identity. Computed in float32.
    """
    _check_shift(shift)
    u = jnp.asarray(u, jnp.float32)
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(key: jax.Array, shape, shift: float = 5.0):
    """Training sigmas: ``u ~ U[0, 1)`` of ``shape`` (e.g. [B, T] per sample and frame), shifted.

    Returns f32[shape] in [0, 1).
    """
    return shift_sigma(jax.random.uniform(key, tuple(shape), jnp.float32), shift)


def sigma_to_timestep(sigma):
    """The model's timestep ``1000 sigma`` (float32, continuous; 0 = clean)."""
    return jnp.asarray(sigma, jnp.float32) * NUM_TRAIN_TIMESTEPS


def _expand(sigma, x):
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim > x.ndim or x.shape[: sigma.ndim] != sigma.shape:
        raise InputError(
            f"sigma of shape {tuple(sigma.shape)} must match the leading axes of x {tuple(x.shape)} "
            "(e.g. sigma [B, T] for x [B, T, h, w, C])"
        )
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def add_noise(x0, eps, sigma):
    """``(1 - sigma) x0 + sigma eps`` in float32; ``sigma`` covers the leading axes of ``x0``.

    Args:
      x0, eps: [..., h, w, C] clean latents and standard normal noise (same shape).
      sigma: f32 with shape equal to a prefix of ``x0.shape`` (e.g. [B, T]).
    """
    if x0.shape != eps.shape:
        raise InputError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape")
    s = _expand(sigma, x0)
    return (1.0 - s) * x0.astype(jnp.float32) + s * eps.astype(jnp.float32)


def velocity_target(x0, eps):
    """The flow-matching target ``eps - x0`` (float32)."""
    return eps.astype(jnp.float32) - x0.astype(jnp.float32)


def x0_from_velocity(x_sigma, velocity, sigma):
    """The clean estimate ``x_sigma - sigma v`` (float32), as the sampler's data prediction."""
    s = _expand(sigma, x_sigma)
    return x_sigma.astype(jnp.float32) - s * velocity.astype(jnp.float32)
