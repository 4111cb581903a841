"""Reading the memory: projection of every point into a target camera's latent grid + z-buffer.

Spec section 2: K (in pixels of an image of size ``image_hw``) is scaled to the latent grid with
the memory's convention, every valid point is projected (``X = c2w^-1 p``, ``u = fx' X/Z + cx'``,
``v = fy' Y/Z + cy'``), rounded to the nearest cell (half to even, as ``torch.round``), kept when
``Z > 0`` and inside the grid, and per cell the nearest point wins: its whole feature vector is
copied. Empty cells are 0. Ties of exactly equal depth go to the most recently written entry
(ring order), deterministically on every device (see :mod:`mirage_jax.memory.projection`).

The readout is differentiable with respect to ``mem.features`` (a gather of the winners).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.geometry.cameras import CONVENTIONS, scale_intrinsics
from mirage_jax.errors import check_hw
from mirage_jax.memory._internal import (
    TRACE_COUNTS,
    LatentMemory,
    LatentMemoryError,
    check_camera,
    check_memory,
    without_config,
)
from mirage_jax.memory.projection import project_to_cells, zbuffer

__all__ = ["AUTO_CHUNK_POINTS", "Readout", "frustum_visible", "read", "read_many", "render_grid"]

# read_many's default working-set bound: projected points per step (cameras x memory slots).
AUTO_CHUNK_POINTS = 2**24


class Readout(NamedTuple):
    """What a camera sees in the memory.

    features: [..., h, w, C] (memory dtype) the winning entry's features, 0 where empty.
    hit: bool[..., h, w] a point landed in the cell.
    depth: f32[..., h, w] camera z of the winning point, 0 where empty.
    """

    features: jax.Array
    hit: jax.Array
    depth: jax.Array


def _resolve_convention(mem, convention):
    convention = mem.config.convention if convention is None else convention
    if convention not in CONVENTIONS:
        raise LatentMemoryError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def render_grid(points, valid, features, cursor, intrinsics, cam2world, image_hw, grid_hw, convention):
    """Single-camera z-buffer readout of a point set (the kernel shared with the RGB cache).

    Args:
      points: f32[N, 3]; valid: bool[N]; features: [N, C]; cursor: int32[] ring head (entries
        in ring order from ``cursor`` are oldest to newest; exact depth ties go to the newest).
      intrinsics: f32[3, 3] in pixels of ``image_hw``; cam2world: f32[4, 4].
      grid_hw: static (h, w) of the output grid.

    Returns:
      Readout with features [h, w, C], hit [h, w], depth [h, w].
    """
    h, w = grid_hw
    n = points.shape[0]
    # Same bits whether the camera is a traced argument or a constant closed over by a jit.
    intrinsics, cam2world = jax.lax.optimization_barrier(
        (jnp.asarray(intrinsics, jnp.float32), jnp.asarray(cam2world, jnp.float32))
    )
    Kg = scale_intrinsics(intrinsics, image_hw, grid_hw, convention)
    cell, z, inside = project_to_cells(points, valid, Kg, cam2world, grid_hw)
    priority = (jnp.arange(n, dtype=jnp.int32) - cursor) % n
    zb = zbuffer(cell, z, inside, priority, h * w)
    slot = (zb.winner + cursor) % n
    feats = jnp.where(zb.hit[:, None], features[slot], jnp.zeros((), features.dtype))
    return Readout(
        features=feats.reshape(h, w, features.shape[-1]),
        hit=zb.hit.reshape(h, w),
        depth=zb.depth.reshape(h, w),
    )


def _read_impl(mem, intrinsics, cam2world, image_hw, grid_hw, convention):
    TRACE_COUNTS["read"] += 1
    return render_grid(
        mem.points, mem.valid, mem.features, mem.cursor, intrinsics, cam2world, image_hw, grid_hw, convention
    )


def _read_many_impl(mem, intrinsics, cam2world, image_hw, grid_hw, convention, camera_chunk):
    TRACE_COUNTS["read_many"] += 1
    V = cam2world.shape[0]
    K = jnp.broadcast_to(intrinsics, (V, 3, 3))

    def one(args):
        k, p = args
        return render_grid(mem.points, mem.valid, mem.features, mem.cursor, k, p, image_hw, grid_hw, convention)

    if camera_chunk >= V:
        return jax.vmap(lambda k, p: one((k, p)))(K, cam2world)
    return jax.lax.map(one, (K, cam2world), batch_size=camera_chunk)


_read_jit = jax.jit(_read_impl, static_argnames=("image_hw", "grid_hw", "convention"))
_read_many_jit = jax.jit(
    _read_many_impl, static_argnames=("image_hw", "grid_hw", "convention", "camera_chunk")
)


def read(
    mem: LatentMemory,
    intrinsics,
    cam2world,
    image_hw,
    latent_hw,
    convention: str | None = None,
    *,
    validate: bool = True,
) -> Readout:
    """Reads the memory at one camera.

    Args:
      mem: the memory.
      intrinsics: f32[3, 3] in pixels of an image of size ``image_hw``.
      cam2world: f32[4, 4] OpenCV camera-to-world of the target camera.
      image_hw: (H, W) the intrinsics belong to.
      latent_hw: (h, w) output grid (44 x 80 for 704 x 1280 with Wan2.2).
      convention: "reference" | "centred"; None = ``mem.config.convention`` (use the one the
        memory was written with).
      validate: host-side check of K and the pose when concrete, including that K belongs to
        ``image_hw`` (principal point with cx in [-W, 2W], cy in [-H, 2H]). Traced values
        (inside the caller's jit / vmap) are not checked: K of another resolution then reads
        misplaced cells or no hits.

    Returns:
      Readout(features [h, w, C], hit bool[h, w], depth f32[h, w]).
    """
    check_memory(mem)
    image_hw = check_hw(image_hw, "image_hw", LatentMemoryError)
    latent_hw = check_hw(latent_hw, "latent_hw", LatentMemoryError)
    convention = _resolve_convention(mem, convention)
    intrinsics, cam2world = check_camera(intrinsics, cam2world, (), validate, image_hw=image_hw)
    return _read_jit(
        without_config(mem),
        jnp.asarray(intrinsics, jnp.float32),
        jnp.asarray(cam2world, jnp.float32),
        image_hw=image_hw,
        grid_hw=latent_hw,
        convention=convention,
    )


def read_many(
    mem: LatentMemory,
    intrinsics,
    cam2world,
    image_hw,
    latent_hw,
    convention: str | None = None,
    *,
    camera_chunk: int | None = None,
    validate: bool = True,
) -> Readout:
    """Reads the memory at V cameras in one call (e.g. a chunk's 9 latent poses).

    Args:
      intrinsics: f32[V, 3, 3] or a shared f32[3, 3], in pixels of ``image_hw``.
      cam2world: f32[V, 4, 4].
      camera_chunk: cameras read in parallel per step (vmap within a step, ``lax.map`` across
        steps); results do not depend on it. None (default): one at a time on CPU (fastest
        there), otherwise as many as keep a step under about 2**24 projected points (all V at
        once while V x N <= 2**24); an int sets it (V = all in parallel).
      Others as :func:`read`.

    Returns:
      Readout(features [V, h, w, C], hit bool[V, h, w], depth f32[V, h, w]).
    """
    check_memory(mem)
    image_hw = check_hw(image_hw, "image_hw", LatentMemoryError)
    latent_hw = check_hw(latent_hw, "latent_hw", LatentMemoryError)
    convention = _resolve_convention(mem, convention)
    shape = tuple(np.shape(cam2world))
    if len(shape) != 3:
        raise LatentMemoryError(f"cam2world: expected shape [V, 4, 4], got {list(shape)}")
    intrinsics, cam2world = check_camera(intrinsics, cam2world, shape[:1], validate, image_hw=image_hw)
    if camera_chunk is not None and (not isinstance(camera_chunk, int) or camera_chunk < 1):
        raise LatentMemoryError(f"camera_chunk must be None or a positive int, got {camera_chunk!r}")
    if camera_chunk is None:
        camera_chunk = _auto_camera_chunk(mem.capacity)
    camera_chunk = min(camera_chunk, shape[0])  # one compilation for every value >= V
    return _read_many_jit(
        without_config(mem),
        jnp.asarray(intrinsics, jnp.float32),
        jnp.asarray(cam2world, jnp.float32),
        image_hw=image_hw,
        grid_hw=latent_hw,
        convention=convention,
        camera_chunk=camera_chunk,
    )


def _auto_camera_chunk(capacity: int) -> int:
    """Default cameras per step of read_many (a performance choice; results are identical).

    On CPU one camera at a time is fastest (a vmapped scatter is measured 1.3-3.6x slower per
    camera, experiments/bench_memory.py); on accelerators cameras run in parallel up to about
    2**24 projected points per step.
    """
    if jax.default_backend() == "cpu":
        return 1
    return max(1, AUTO_CHUNK_POINTS // capacity)


def _frustum_impl(points, valid, intrinsics, cam2world, near, far, image_hw, grid_hw, convention):
    TRACE_COUNTS["frustum_visible"] += 1
    intrinsics, cam2world = jax.lax.optimization_barrier((intrinsics, cam2world))

    def one(K, P):
        Kg = scale_intrinsics(K, image_hw, grid_hw, convention)
        _, z, inside = project_to_cells(points, valid, Kg, P, grid_hw)
        return inside & (z > near) & (z < far)

    if cam2world.ndim == 2:
        return one(intrinsics, cam2world)
    K = jnp.broadcast_to(intrinsics, cam2world.shape[:1] + (3, 3))
    return jax.vmap(one)(K, cam2world)


_frustum_jit = jax.jit(_frustum_impl, static_argnames=("image_hw", "grid_hw", "convention"))


def frustum_visible(
    mem: LatentMemory,
    intrinsics,
    cam2world,
    image_hw,
    grid_hw=None,
    near: float = 0.0,
    far: float = math.inf,
    convention: str | None = None,
    *,
    validate: bool = True,
):
    """Which memory entries lie inside one or many camera frusta (no occlusion test).

    A point is visible when it is valid, ``near < Z < far`` and its projection rounds to a cell
    of the ``grid_hw`` grid (default: the image's pixel grid ``image_hw``), i.e. exactly the
    points a :func:`read` at that grid would consider before the z-buffer.

    Args:
      intrinsics: f32[3, 3] or [V, 3, 3] in pixels of ``image_hw``.
      cam2world: f32[4, 4] or [V, 4, 4].
      validate: as in :func:`read` (K must belong to ``image_hw`` when concrete).

    Returns:
      bool[N] for one camera, bool[V, N] for V cameras.
    """
    check_memory(mem)
    image_hw = check_hw(image_hw, "image_hw", LatentMemoryError)
    grid_hw = image_hw if grid_hw is None else check_hw(grid_hw, "grid_hw", LatentMemoryError)
    convention = _resolve_convention(mem, convention)
    shape = tuple(np.shape(cam2world))
    if len(shape) not in (2, 3):
        raise LatentMemoryError(f"cam2world: expected shape [4, 4] or [V, 4, 4], got {list(shape)}")
    intrinsics, cam2world = check_camera(intrinsics, cam2world, shape[:-2], validate, image_hw=image_hw)
    return _frustum_jit(
        mem.points,
        mem.valid,
        jnp.asarray(intrinsics, jnp.float32),
        jnp.asarray(cam2world, jnp.float32),
        jnp.asarray(near, jnp.float32),
        jnp.asarray(far, jnp.float32),
        image_hw=image_hw,
        grid_hw=grid_hw,
        convention=convention,
    )
