"""Classifier-free guidance for the flow samplers: optional, off by default like the reference.

The reference samples with no guidance (scale 1, one model call per step). With a scale ``w != 1``
the velocity is ``v_uncond + w (v_cond - v_uncond)``, where ``v_uncond`` comes from the same model
call with the *negative prompt's* text embedding (Wan's default negative prompt, or ``""``,
encoded by the same text encoder and padded to the same length) in place of the prompt's::

    text = encode_prompts([prompt]); neg = encode_prompts([negative_prompt])
    velocity_fn = lambda x, t: guided_velocity(lambda ctx: model(x, t, ctx), text, neg, scale=5.0)
    x = denoise(FlowUniPC(), velocity_fn, noise)

``scale`` is a static Python number, so ``scale == 1`` costs exactly one forward (no uncond call
is traced). Callers that prefer one batched forward can concatenate the two contexts themselves
and combine the halves with :func:`cfg_velocity`.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from mirage_jax.errors import ConfigError, InputError

__all__ = ["cfg_velocity", "guided_velocity"]


def _check_scale(scale) -> float:
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ConfigError(f"guidance scale must be a finite Python number, got {scale!r}")
    return float(scale)


def cfg_velocity(v_cond, v_uncond, scale: float) -> jax.Array:
    """``v_uncond + scale (v_cond - v_uncond)`` (scale 1 gives ``v_cond``). Shapes [...] equal.

    Computed in float32 (or wider), returned in ``v_cond``'s dtype.
    """
    scale = _check_scale(scale)
    v_cond, v_uncond = jnp.asarray(v_cond), jnp.asarray(v_uncond)
    if v_cond.shape != v_uncond.shape:
        raise InputError(
            f"v_cond {tuple(v_cond.shape)} and v_uncond {tuple(v_uncond.shape)} must have the same shape"
        )
    ct = jnp.promote_types(v_cond.dtype, jnp.float32)
    vc, vu = v_cond.astype(ct), v_uncond.astype(ct)
    return (vu + scale * (vc - vu)).astype(v_cond.dtype)


def guided_velocity(velocity_fn: Callable, cond, uncond=None, *, scale: float = 1.0) -> jax.Array:
    """The guided velocity from ``velocity_fn(context) -> v [...]``.

    Args:
      velocity_fn: the model call with everything but the text context bound (latents, timestep).
      cond: the prompt's context (e.g. text embeddings [B, L, text_dim]).
      uncond: the negative prompt's context, same structure; required when ``scale != 1``.
      scale: the guidance scale (static). 1 (default, the reference): one call, ``velocity_fn(cond)``.
    """
    scale = _check_scale(scale)
    if scale == 1.0:
        return velocity_fn(cond)
    if uncond is None:
        raise InputError(f"guidance scale {scale} needs an unconditional (negative prompt) context")
    return cfg_velocity(velocity_fn(cond), velocity_fn(uncond), scale)
