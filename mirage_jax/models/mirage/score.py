"""The constant "score" half of the control input (spec 3, 10.3): the normalised VAE encoding
of an all-ones (white) video with ``(F - 1) * temporal_ratio + 1`` frames at the pixel size.

It depends only on the VAE and the shape, so it is computed once per (VAE object, F, H, W) and
cached. The cache holds the VAE weakly (an entry dies with its VAE); a VAE whose weights are
changed in place keeps its old entries: call :func:`clear_score_cache` after such a change.
"""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
from flax import nnx

from mirage_jax.errors import InputError, check_hw

__all__ = ["score_latent", "clear_score_cache"]

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@nnx.jit(static_argnums=(1,))
def _encode_ones(vae, shape):
    return vae.normalize(vae.encode(jnp.ones(shape, jnp.float32)))[0]


def score_latent(vae, num_latent_frames: int, image_hw) -> jax.Array:
    """``[F, H / s, W / s, z_dim]`` float32: ``vae.normalize(vae.encode(ones))`` for a video of
    ``(F - 1) * vae.config.temporal_ratio + 1`` frames of ``image_hw`` (pixels, divisible by
    the VAE's spatial ratio) in [-1, 1]. Cached per (VAE object, F, H, W)."""
    f = num_latent_frames
    if not isinstance(f, int) or isinstance(f, bool) or f < 1:
        raise InputError(f"num_latent_frames must be a positive int, got {num_latent_frames!r}")
    h, w = check_hw(image_hw)
    per_vae = _CACHE.setdefault(vae, {})
    key = (f, h, w)
    if key not in per_vae:
        frames = (f - 1) * vae.config.temporal_ratio + 1
        per_vae[key] = _encode_ones(vae, (1, frames, h, w, 3)).astype(jnp.float32)
    return per_vae[key]


def clear_score_cache() -> None:
    """Forgets every cached score latent."""
    _CACHE.clear()
