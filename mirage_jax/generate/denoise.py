"""One chunk's denoising (spec 3, 10.2, 10.6, 10.7): the sampler loop around one Mirage model call
per step, with the clean frame 0 re-imposed after every step, as one compiled program.

    x = denoise_chunk(model, FlowUniPC(), noise, first_latent, control, text,
                      reference=refs, preceding=prec)            # [B, T, h, w, C]

Per step ``i`` of the sampler the model sees the latent frames ``[reference | x | preceding]``
with per-frame timesteps ``[0] * R + [0, t_i, ..., t_i] + [0] * P`` (``t_i`` the sampler's
truncated integer timestep; the clean frame 0, the references and the preceding frames are at
timestep 0); the sampler updates the whole target ``x`` (frame 0 included, as the reference's
scheduler does) with the velocity of the target frames, then frame 0 is set back to the clean
latent (also before the first step: the reference's initial latents carry the clean frame).

Fixed shapes: ``reference_mask`` / ``preceding_mask`` (bool ``[B, R]`` / ``[B, P]``) mark padded
slots, which the model excludes as attention keys (``frame_mask``). With the reference padding
first and the preceding padding last the padded call equals the unpadded one on the real frames
(:mod:`mirage_jax.models.mirage.model`), so one compiled program serves every chunk of a rollout
whatever its number of references (0..R) and preceding frames (0..P).
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mirage_jax.diffusion import denoise
from mirage_jax.errors import InputError

__all__ = ["TRACE_COUNTS", "chunk_timesteps", "denoise_chunk", "denoise_chunk_pure"]

# How often each jitted program of this package has been traced (tests prove reuse with it).
TRACE_COUNTS: collections.Counter = collections.Counter()


def chunk_timesteps(t, num_reference: int, num_target: int, num_preceding: int) -> jax.Array:
    """int32 ``[R + T + P]``: 0 for the references, target frame 0 and the preceding frames,
    ``t`` (a scalar, traced is fine) for target frames 1..T-1."""
    t = jnp.asarray(t, jnp.int32)
    zeros = lambda n: jnp.zeros((n,), jnp.int32)  # noqa: E731
    return jnp.concatenate([zeros(num_reference + 1), jnp.full((num_target - 1,), t), zeros(num_preceding)])


def _frame_mask(b, t, reference_mask, preceding_mask, r, p):
    if reference_mask is None and preceding_mask is None:
        return None
    rm = jnp.ones((b, r), bool) if reference_mask is None else jnp.broadcast_to(reference_mask, (b, r))
    pm = jnp.ones((b, p), bool) if preceding_mask is None else jnp.broadcast_to(preceding_mask, (b, p))
    return jnp.concatenate([rm, jnp.ones((b, t), bool), pm], axis=1)


def denoise_chunk_pure(model, sampler, noise, first_latent, control, text, reference, preceding,
                       reference_mask=None, preceding_mask=None) -> jax.Array:
    """The traceable body of :func:`denoise_chunk` on a (merged) model: call it inside a jit
    (the rollout's chunk program does). ``reference`` / ``preceding`` are arrays with R / P >= 0
    frames (``[B, 0, h, w, C]`` for none). Returns ``[B, T, h, w, C]`` in ``noise``'s dtype."""
    b, t = noise.shape[:2]
    r, p = reference.shape[1], preceding.shape[1]
    dtype = noise.dtype
    first = first_latent.astype(dtype)[:, None]
    ref, pre = reference.astype(dtype), preceding.astype(dtype)
    frame_mask = _frame_mask(b, t, reference_mask, preceding_mask, r, p)
    # The module is rebuilt (fresh variables, copy=True) inside the loop body: NNX transforms in
    # the model (nnx.scan over stacked layers) refuse variables of an outer trace level.
    graphdef, state = nnx.split(model)

    def velocity(x, step_t):
        latents = jnp.concatenate([ref, x, pre], axis=1)
        m = nnx.merge(graphdef, state, copy=True)
        v = m(latents, chunk_timesteps(step_t, r, t, p), text, control, num_reference=r, frame_mask=frame_mask)
        return v[:, r:r + t]

    def reimpose(x, _):
        return x.at[:, :1].set(first)

    return denoise(sampler, velocity, reimpose(noise, 0), after_step=reimpose)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _denoise_jit(graphdef, state, sampler, noise, first_latent, control, text, reference, preceding,
                 reference_mask, preceding_mask):
    TRACE_COUNTS["denoise_chunk"] += 1
    model = nnx.merge(graphdef, state)
    return denoise_chunk_pure(model, sampler, noise, first_latent, control, text, reference, preceding,
                              reference_mask, preceding_mask)


def _check_5d(x, name, b, hwc, want):
    if x.ndim != 5 or x.shape[0] != b or tuple(x.shape[2:]) != hwc:
        raise InputError(f"{name} must be {want} with B = {b} and (h, w, C) = {hwc}, got shape {tuple(x.shape)}")


def _check_mask(m, name, b, n):
    if m is None:
        return None
    m = jnp.asarray(m)
    if m.dtype != jnp.bool_ or m.ndim != 2 or m.shape[1] != n or m.shape[0] not in (1, b):
        raise InputError(f"{name} must be bool [B, {n}] (True = real frame), got {m.dtype} {tuple(m.shape)}")
    return m


def denoise_chunk(model, sampler, noise, first_latent, control, text, *, reference=None, preceding=None,
                  reference_mask=None, preceding_mask=None) -> jax.Array:
    """Denoises one chunk (jitted as one program; ``sampler`` is static).

    Args:
      model: a :class:`~mirage_jax.models.mirage.MirageModel` (or any NNX module with its call).
      sampler: :class:`~mirage_jax.diffusion.FlowUniPC` (the reference's) or ``FlowEuler``.
      noise: ``[B, T, h, w, C]`` the initial noise (frame 0 is replaced by ``first_latent``).
      first_latent: ``[B, h, w, C]`` the clean frame 0 (normalised latents).
      control: ``[B, T + P, h, w, C_ctrl]`` readouts of the target then preceding frames || score.
      text: ``[B, L, text_dim]`` prompt embeddings.
      reference: ``[B, R, h, w, C]`` clean reference latents, or None (R = 0).
      preceding: ``[B, P, h, w, C]`` clean preceding latents, or None (P = 0).
      reference_mask, preceding_mask: optional bool ``[B, R]`` / ``[B, P]``, False = padding
        (put reference padding first and preceding padding last; see the module docstring).
    Returns:
      ``[B, T, h, w, C]`` the denoised target latents (frame 0 = ``first_latent``), noise's dtype.
    """
    noise = jnp.asarray(noise)
    if noise.ndim != 5 or noise.shape[1] < 2:
        raise InputError(f"noise must be [B, T, h, w, C] with T >= 2, got shape {tuple(noise.shape)}")
    if not jnp.issubdtype(noise.dtype, jnp.floating):
        raise InputError(f"noise must be floating, got {noise.dtype}")
    b, t, h, w, c = noise.shape
    first_latent = jnp.asarray(first_latent)
    if tuple(first_latent.shape) != (b, h, w, c):
        raise InputError(f"first_latent must be [B, h, w, C] = {(b, h, w, c)}, got shape {tuple(first_latent.shape)}")
    empty = jnp.zeros((b, 0, h, w, c), noise.dtype)
    reference = empty if reference is None else jnp.asarray(reference)
    preceding = empty if preceding is None else jnp.asarray(preceding)
    _check_5d(reference, "reference", b, (h, w, c), "[B, R, h, w, C]")
    _check_5d(preceding, "preceding", b, (h, w, c), "[B, P, h, w, C]")
    r, p = reference.shape[1], preceding.shape[1]
    control = jnp.asarray(control)
    if control.ndim != 5 or control.shape[0] not in (1, b) or tuple(control.shape[1:4]) != (t + p, h, w):
        raise InputError(f"control must be [B, T + P, h, w, C_ctrl] = [{b}, {t + p}, {h}, {w}, C_ctrl], got shape {tuple(control.shape)}")
    text = jnp.asarray(text)
    if text.ndim != 3 or text.shape[0] not in (1, b):
        raise InputError(f"text must be [B, L, text_dim] with B = {b}, got shape {tuple(text.shape)}")
    reference_mask = _check_mask(reference_mask, "reference_mask", b, r)
    preceding_mask = _check_mask(preceding_mask, "preceding_mask", b, p)
    graphdef, state = nnx.split(model)
    return _denoise_jit(graphdef, state, sampler, noise, first_latent, control, text, reference, preceding,
                        reference_mask, preceding_mask)
