"""Depth and mask providers for the rollout's write-back (spec 2, 10.7).

A provider is any callable

    provider(frames uint8 [n, H, W, 3], intrinsics f32[n, 3, 3], cam2world f32[n, 4, 4],
             frame_index int[n]) -> depth f32[n, H, W]      (z-depth, 0 = unknown)
                                  | exclude bool[n, H, W]   (mask providers; True = do not store)

called on the host after each chunk with the chunk's every 4th decoded frame, its cameras and
its pixel frame indices in the video. So a user who runs a PyTorch depth model (MapAnything, as
the reference) passes a plain Python function. Provided here:

* :class:`GeometryDepth` / :class:`GeometryMask`: ground truth from a reference ``geometry.npz``
  (or any ``[T, H, W]`` arrays indexed by pixel frame);
* :class:`RenderedDepth` / :class:`RenderedMask`: ground truth from our renderer
  (:mod:`mirage_jax.data.worlds`) at the requested cameras;
* :class:`JaxDepth`: a JAX depth model ``fn(images f32[n, H, W, 3] in [0, 1], intrinsics) ->
  [n, H, W]``, jitted once.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.errors import InputError

__all__ = ["GeometryDepth", "GeometryMask", "RenderedDepth", "RenderedMask", "JaxDepth"]


def _frames_of(table: np.ndarray, frame_index, what: str) -> np.ndarray:
    idx = np.asarray(frame_index, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
        raise InputError(f"{what} holds {table.shape[0]} frames; frame {int(idx.max())} was asked for")
    return table[idx]


class GeometryDepth:
    """Depth ``depths[frame_index]`` from ``[T, H, W]`` arrays (e.g. ``GeometryNpz.depths``)."""

    def __init__(self, depths, what: str = "the depth file"):
        self.depths = np.asarray(depths, np.float32)
        if self.depths.ndim != 3:
            raise InputError(f"{what}: depths must be [T, H, W], got shape {self.depths.shape}")
        self.what = what

    def __call__(self, frames, intrinsics, cam2world, frame_index):
        return _frames_of(self.depths, frame_index, self.what)


class GeometryMask:
    """Exclusion ``~keep[frame_index]`` from ``[T, H, W]`` keep masks (``GeometryNpz.masks``:
    True = static / keep, the reference's convention)."""

    def __init__(self, keep, what: str = "the mask file"):
        self.keep = np.asarray(keep, bool)
        if self.keep.ndim != 3:
            raise InputError(f"{what}: masks must be [T, H, W], got shape {self.keep.shape}")
        self.what = what

    def __call__(self, frames, intrinsics, cam2world, frame_index):
        return ~_frames_of(self.keep, frame_index, self.what)


class RenderedDepth:
    """Exact z-depth of a procedural world at the requested cameras (0 = sky), at time
    ``frame_index / fps`` (moving objects)."""

    def __init__(self, scene, image_hw, fps: float = 16.0):
        self.scene, self.image_hw, self.fps = scene, tuple(image_hw), float(fps)

    def _render(self, intrinsics, cam2world, frame_index):
        from mirage_jax.data.worlds import render_frames

        times = np.asarray(frame_index, np.float32) / self.fps
        return render_frames(self.scene, np.asarray(intrinsics, np.float32), np.asarray(cam2world, np.float32),
                             self.image_hw, times)

    def __call__(self, frames, intrinsics, cam2world, frame_index):
        return np.asarray(self._render(intrinsics, cam2world, frame_index)["depth"], np.float32)


class RenderedMask(RenderedDepth):
    """Exclusion masks of a procedural world: dynamic objects and sky (spec 2)."""

    def __call__(self, frames, intrinsics, cam2world, frame_index):
        out = self._render(intrinsics, cam2world, frame_index)
        return np.asarray(out["dynamic"], bool) | np.asarray(out["sky"], bool)


class JaxDepth:
    """A JAX depth model as a provider: ``fn(images f32[n, H, W, 3] in [0, 1], intrinsics
    f32[n, 3, 3]) -> f32[n, H, W]`` z-depth, jitted once (same shapes every chunk)."""

    def __init__(self, fn: Callable):
        self.fn = jax.jit(fn)

    def __call__(self, frames, intrinsics, cam2world, frame_index):
        images = jnp.asarray(frames, jnp.float32) / 255.0
        return np.asarray(self.fn(images, jnp.asarray(intrinsics, jnp.float32)), np.float32)
