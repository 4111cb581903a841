"""RGB point-cloud cache: the baseline Mirage replaces (Gen3C / Spatia / VMem style).

A full-resolution RGB image and its depth are written as one point per pixel; a target camera
is rendered at full pixel resolution with a 1-pixel splat where the nearest point wins (no
blending, no hole filling). It is the latent memory's machinery at stride 1: the same
:class:`~mirage_jax.memory.core.LatentMemory` pytree with 3 channels (uint8 by default: 3 bytes
of colour per point, the most compact RGB cache, a fair baseline), the same write kernel (ring
or voxel fusion, counters, strict mode) and the same projection and deterministic z-buffer
(:func:`mirage_jax.memory.retrieval.render_grid`). At stride 1 no depth resize happens and K is
used unscaled in both conventions.

A baseline pipeline renders the cache at the target camera and re-encodes the render with the
VAE encoder; that pairing lives with the models.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.memory import core, retrieval
from mirage_jax.memory.core import LatentMemory, LatentMemoryError

__all__ = ["RGBRender", "empty", "render", "render_many", "write", "write_frames"]


class RGBRender(NamedTuple):
    """A rendered view: image [..., H, W, 3] (cache dtype, 0 where empty), hit bool[..., H, W],
    depth f32[..., H, W] (0 where empty)."""

    image: jax.Array
    hit: jax.Array
    depth: jax.Array


def empty(capacity: int, dtype=jnp.uint8, **options) -> LatentMemory:
    """An empty RGB cache of ``capacity`` points (uint8 colours by default, or a float dtype)."""
    return core.empty(capacity, 3, dtype, **options)


def _check_image(cache, image, name, frames):
    shape = tuple(np.shape(image))
    want = 4 if frames else 3
    if len(shape) != want or shape[-1] != 3:
        raise LatentMemoryError(
            f"{name}: expected shape {'[T, H, W, 3]' if frames else '[H, W, 3]'} (channels-last RGB), got {list(shape)}"
        )
    if cache.channels != 3:
        raise LatentMemoryError(f"cache: an RGB cache has 3 channels, this memory has {cache.channels}")


def write(cache: LatentMemory, image, depth, intrinsics, cam2world, exclude=None, **kwargs) -> LatentMemory:
    """Writes one full-resolution frame as points, one per pixel.

    Args:
      cache: the RGB cache.
      image: [H, W, 3] in the cache's dtype (uint8 for the default cache; float for float caches).
      depth: f32[H, W] z-depth, 0 where unknown.
      intrinsics: f32[3, 3] pixels; cam2world: f32[4, 4] OpenCV; exclude: optional bool[H, W].
      **kwargs: ``validate``, ``donate`` and memory options, as :func:`mirage_jax.memory.write`.
    """
    _check_image(cache, image, "image", False)
    return core.write(cache, image, depth, intrinsics, cam2world, exclude, **kwargs)


def write_frames(cache: LatentMemory, images, depths, intrinsics, cam2world, exclude=None, **kwargs) -> LatentMemory:
    """Writes T frames: images [T, H, W, 3], depths [T, H, W], intrinsics [3, 3] or [T, 3, 3],
    cam2world [T, 4, 4], exclude bool[T, H, W] or None."""
    _check_image(cache, images, "images", True)
    return core.write_frames(cache, images, depths, intrinsics, cam2world, exclude, **kwargs)


def _as_render(r: retrieval.Readout) -> RGBRender:
    return RGBRender(image=r.features, hit=r.hit, depth=r.depth)


def render(cache: LatentMemory, intrinsics, cam2world, image_hw, **kwargs) -> RGBRender:
    """Renders the cache at a camera at full resolution (1-pixel splat, nearest point wins).

    Args:
      intrinsics: f32[3, 3] in pixels of ``image_hw``; cam2world: f32[4, 4];
      image_hw: (H, W) output size.
      **kwargs: ``convention``, ``validate`` as :func:`mirage_jax.memory.read`.

    Returns:
      RGBRender(image [H, W, 3], hit [H, W], depth [H, W]).
    """
    return _as_render(retrieval.read(cache, intrinsics, cam2world, image_hw, image_hw, **kwargs))


def render_many(cache: LatentMemory, intrinsics, cam2world, image_hw, **kwargs) -> RGBRender:
    """Renders V cameras: intrinsics [V, 3, 3] or [3, 3], cam2world [V, 4, 4] ->
    RGBRender(image [V, H, W, 3], ...). ``camera_chunk`` bounds the working set."""
    return _as_render(retrieval.read_many(cache, intrinsics, cam2world, image_hw, image_hw, **kwargs))
