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
  [n, H, W]``, jitted once;
* :class:`NoisyDepth`: another provider's depth with seeded multiplicative noise (ablations).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.errors import ConfigError, InputError

__all__ = ["GeometryDepth", "GeometryMask", "RenderedDepth", "RenderedMask", "JaxDepth", "NoisyDepth"]


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


class NoisyDepth:
    """Depth with noise: ``d x exp(e)`` per pixel, ``e ~ N(0, rel_std**2)`` (a log-normal
    relative error, about ``rel_std`` for small values, never changing the sign), where ``d`` is
    ``provider``'s depth. Invalid depth (0) stays 0. The noise of pixel frame ``t`` is drawn from
    ``numpy.random.default_rng([seed, t])``, so a frame gets the same noise in every run and
    whatever the chunking."""

    def __init__(self, provider: Callable, rel_std: float, seed: int = 0):
        rel_std = float(rel_std)
        if not (np.isfinite(rel_std) and rel_std >= 0):
            raise ConfigError(f"NoisyDepth: rel_std must be a finite number >= 0, got {rel_std}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"NoisyDepth: seed must be an int >= 0, got {seed!r}")
        self.provider, self.rel_std, self.seed = provider, rel_std, int(seed)

    def __call__(self, frames, intrinsics, cam2world, frame_index):
        depth = np.asarray(self.provider(frames, intrinsics, cam2world, frame_index), np.float32)
        idx = np.asarray(frame_index, np.int64).reshape(-1)
        if depth.ndim != 3 or depth.shape[0] != idx.size:
            raise InputError(f"NoisyDepth: the provider returned shape {depth.shape} for {idx.size} frames")
        noise = np.stack([np.random.default_rng([self.seed, int(t)]).standard_normal(depth.shape[1:]) for t in idx])
        return np.where(depth > 0, depth * np.exp(self.rel_std * noise), depth).astype(np.float32)
