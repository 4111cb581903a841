"""The control readout of the explicit variant: an RGB point-cloud cache rendered and VAE-encoded.

The systems Mirage replaces (Gen3C, Spatia, VMem; spec 1) keep an RGB point cloud, rasterise it
at full pixel resolution at the target cameras and re-encode the render with the VAE. The
paper's "explicit" ablation (issue 10 section 4) feeds exactly that to the same control branch:
the readout half of the control input becomes ``vae.normalize(vae.encode(render))`` instead of
the latent memory's projection. The cache is :mod:`mirage_jax.memory.rgb_cache` (uint8 colours,
one point per pixel, 1-pixel splat, nearest point wins, empty pixels 0 = black, -1 in [-1, 1]).

One function builds the readout for training (the records' precomputed ``rgb_control``,
:class:`mirage_jax.data.latents.RGBControlEncoder`) and for inference
(:mod:`mirage_jax.generate.rollout` with ``memory_kind="rgb"``), so both feed the model the same
kind of input:

* the target: its ``4 k + 1`` pixel cameras (33 for a chunk) rendered and encoded as ONE video
  with the causal VAE -> ``k + 1`` latents (9), latent ``i`` covering the renders ``4 i - 3 .. 4 i``;
* each preceding latent: its camera rendered and encoded as a 1-frame video -> 1 latent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mirage_jax.errors import InputError
from mirage_jax.memory import rgb_cache

__all__ = ["CONTROL_SOURCES", "encode_views", "to_uint8", "to_unit"]

# The readouts a model can be trained on and rolled out with: "latent" (Mirage's latent memory) or
# "rgb" (this module's explicit variant); SampleConfig.control_source and RolloutConfig.memory_kind.
CONTROL_SOURCES = ("latent", "rgb")


def to_unit(images) -> jax.Array:
    """uint8 [..., 3] -> f32 in [-1, 1] (x / 127.5 - 1, as the VAE's input)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(video) -> jax.Array:
    """f32 in [-1, 1] -> uint8 [..., 3], rounded; out-of-range values saturate (a decoder's
    overshoot; inputs are range-checked by their callers)."""
    return jnp.round((jnp.clip(video.astype(jnp.float32), -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def encode_views(vae, cache, intrinsics, target_c2w, preceding_c2w, image_hw, *, validate: bool = False):
    """Renders the RGB cache at the target and preceding cameras and VAE-encodes the renders.

    Args:
      vae: a :class:`~mirage_jax.models.wan.vae.WanVAE`.
      cache: an RGB cache (:func:`mirage_jax.memory.rgb_cache.empty`, uint8 colours).
      intrinsics: f32[3, 3] (shared) or [n + P, 3, 3] (target cameras then preceding), pixels of
        ``image_hw``.
      target_c2w: f32[n, 4, 4], n = 1 + 4 k pixel cameras of the target (OpenCV camera-to-world).
      preceding_c2w: f32[P, 4, 4] one camera per preceding latent (P may be 0).
      image_hw: (H, W) render size (the VAE's input size).
      validate: check concrete cameras (off inside jit, where they are traced).

    Returns:
      (features f32[k + 1 + P, H / s, W / s, z_dim] normalised latents: the target's, then one per
      preceding camera; hit bool[n + P, H, W] the rendered pixels).
    """
    if cache.channels != 3 or jnp.dtype(cache.dtype) != jnp.uint8:
        raise InputError(
            f"cache: expected an RGB cache of uint8 colours, got {cache.channels} channels of {cache.dtype}")
    n, P = target_c2w.shape[0], preceding_c2w.shape[0]
    ratio = vae.config.temporal_ratio
    if n < 1 or (n - 1) % ratio:
        raise InputError(f"target_c2w: {n} cameras; the causal VAE encodes 1 + {ratio} k frames")
    views = jnp.concatenate([jnp.asarray(target_c2w, jnp.float32), jnp.asarray(preceding_c2w, jnp.float32)])
    r = rgb_cache.render_many(cache, intrinsics, views, tuple(image_hw), validate=validate)
    video = to_unit(r.image)  # [n + P, H, W, 3]
    feats = [vae.normalize(vae.encode(video[None, :n]))[0]]
    if P:
        feats.append(vae.normalize(vae.encode(video[n:, None]))[:, 0])
    return jnp.concatenate(feats).astype(jnp.float32), r.hit
