"""Grid sampling, back-projection, projection to a cell grid and the deterministic z-buffer.

Shared by the latent memory (latent grid, e.g. 44 x 80) and the RGB point-cloud cache (pixel
grid, e.g. 704 x 1280): both write cells as world points and read by projecting points into a
target camera's grid, keeping per cell the nearest point.

Reference semantics (spec section 2), all reproduced exactly:

* **Depth resize** ``"bilinear"``: ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False, antialias=False)``: the source coordinate of cell u is
  ``max((u + 0.5) * W / w - 0.5, 0)`` (16u + 7.5 for the Wan VAE's factor 16), taps
  ``floor`` and ``floor + 1`` (clamped to the border), weights ``1 - frac`` and ``frac``; the four
  products ``w_y * w_x * D`` are summed in torch's order, so the result is bit-identical to
  PyTorch on CPU. A bilinear sample next to a zero-depth (invalid) pixel averages in the zero
  and yields a point at about half the true depth (a flying point): that is the reference.
* **Depth resize** ``"edge_safe"``: the same taps and weights, but only over *valid* taps
  (finite, > 0, and not excluded by the mask); the weights are renormalised:
  ``d = sum(w_i m_i D_i) / sum(w_i m_i)``, and the cell is 0 (invalid) when no tap is valid.
  Where all four taps are valid this is bit-identical to ``"bilinear"`` (the weights sum to
  exactly 1); next to holes and excluded objects it never averages in a zero or an excluded
  depth, so no half-depth point is ever created. (At a depth discontinuity between two valid
  surfaces it still interpolates, like the reference.)
* **Mask resize**: nearest, mirroring ``F.interpolate(mode="nearest")``: cell u reads source
  index ``floor(u * W / w)`` (16u for factor 16: the top-left pixel of its block, while depth is
  sampled at the block centre; that is the reference).
* **Cells to points**: cell (u, v) with integer indices and grid depth d is
  ``X = ((u - cx') d / fx', (v - cy') d / fy', d)``, ``p = R X + t`` with K scaled to the grid
  (:func:`mirage_jax.geometry.cameras.scale_intrinsics`, ``convention`` reference or centred).
* **Projection**: ``X = c2w^-1 p``, ``u = fx' X / Z + cx'``, ``v = fy' Y / Z + cy'``, rounded to
  the nearest cell, exact .5 half to even (:func:`round_half_even`, the values of ``jnp.round``
  and ``torch.round``);
  a point is kept when valid, ``Z > 0`` and the rounded cell lies inside the grid.
* **Z-buffer**: per cell the point with the smallest Z wins and its whole feature vector is
  copied (no blending, no splat radius, no hole filling). Deterministic: a scatter-min of Z per
  cell, then a scatter-max of a unique integer *priority* among the points whose Z equals the
  cell minimum. min/max are associative and commutative, so the result does not depend on the
  order in which the device applies the updates. The memory's priority is recency (ring order),
  so on an exact depth tie **the most recently written point wins**.

The rigid transforms and pinhole maps are :func:`mirage_jax.geometry.cameras.unproject_grid` /
:func:`~mirage_jax.geometry.cameras.project_points`, which are written as explicit elementwise
multiply-adds rather than ``einsum``: an einsum lowers to a
``dot_general`` whose default precision is TF32/bf16 on GPU/TPU (enough to move a point to a
neighbouring cell) and whose batched (vmapped) form rounds differently from the unbatched one,
whereas elementwise arithmetic gives bit-identical results for ``read`` and ``read_many``, for a
single memory and a vmapped batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.geometry.cameras import project_points, scale_intrinsics, unproject_grid

__all__ = [
    "DEPTH_RESIZES",
    "ZBuffer",
    "bilinear_taps",
    "cells_to_points",
    "nearest_indices",
    "project_to_cells",
    "round_half_even",
    "resize_depth",
    "resize_mask_nearest",
    "zbuffer",
]

DEPTH_RESIZES = ("bilinear", "edge_safe")


# --------------------------------------------------------------------------------------------
# Static sampling tables (host-side NumPy from static shapes, mirroring PyTorch's float math).
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def bilinear_taps(n_in: int, n_out: int):
    """Taps and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis.

    Returns (i0 int[n_out], i1 int[n_out], w0 f32[n_out], w1 f32[n_out]) with the source
    coordinate ``max((i + 0.5) * n_in / n_out - 0.5, 0)`` computed in float32 like PyTorch.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0)).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, w0, w1


@functools.lru_cache(maxsize=None)
def nearest_indices(n_in: int, n_out: int):
    """Source indices of ``F.interpolate(mode="nearest")``: ``min(floor(i * n_in / n_out), n_in - 1)``."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def resize_mask_nearest(mask, grid_hw):
    """Nearest resize of a boolean mask bool[..., H, W] -> bool[..., h, w] (PyTorch "nearest")."""
    H, W = mask.shape[-2:]
    h, w = grid_hw
    iy = nearest_indices(H, h)
    ix = nearest_indices(W, w)
    return mask[..., iy, :][..., :, ix]


def resize_depth(depth, grid_hw, mode: str = "bilinear", exclude=None):
    """Resizes z-depth f32[..., H, W] to the grid f32[..., h, w] (see the module docstring).

    Args:
      depth: f32[..., H, W] z-depth, 0 (or negative / non-finite) where unknown.
      grid_hw: (h, w) static target size.
      mode: "bilinear" (reference, bit-exact PyTorch) or "edge_safe" (validity-weighted).
      exclude: optional bool[..., H, W]; with "edge_safe" excluded pixels are not used as taps.
        Ignored by "bilinear" (the reference applies the mask only to cell validity).

    Returns:
      f32[..., h, w]. With "bilinear" a cell touching a non-finite tap is non-finite (callers
      treat it as invalid); "edge_safe" always returns finite values (0 where no tap is valid).
    """
    if mode not in DEPTH_RESIZES:
        raise ValueError(f"depth_resize must be one of {DEPTH_RESIZES}, got {mode!r}")
    depth = jnp.asarray(depth, jnp.float32)
    H, W = depth.shape[-2:]
    h, w = grid_hw
    if (H, W) == (h, w):
        if mode == "bilinear":
            return depth
        ok = jnp.isfinite(depth) & (depth > 0)
        if exclude is not None:
            ok = ok & ~exclude
        return jnp.where(ok, depth, 0.0)
    y0, y1, wy0, wy1 = bilinear_taps(H, h)
    x0, x1, wx0, wx1 = bilinear_taps(W, w)
    # Taps whose weight is exactly zero everywhere (odd integer factors) are skipped statically:
    # their product is 0 for finite inputs, and skipping them keeps a NaN neighbour out.
    use_y1 = bool(np.any(wy1 != 0))
    use_x1 = bool(np.any(wx1 != 0))
    wy0_, wy1_ = jnp.asarray(wy0)[:, None], jnp.asarray(wy1)[:, None]
    wx0_, wx1_ = jnp.asarray(wx0)[None, :], jnp.asarray(wx1)[None, :]

    def gather(a, ys, xs):
        return a[..., ys, :][..., :, xs]

    taps = [(y0, x0, wy0_ * wx0_)]
    if use_x1:
        taps.append((y0, x1, wy0_ * wx1_))
    if use_y1:
        taps.append((y1, x0, wy1_ * wx0_))
    if use_x1 and use_y1:
        taps.append((y1, x1, wy1_ * wx1_))

    if mode == "bilinear":
        out = None
        for ys, xs, wt in taps:  # torch's summation order: w00 D00 + w01 D01 + w10 D10 + w11 D11
            term = wt * gather(depth, ys, xs)
            out = term if out is None else out + term
        return out

    ok = jnp.isfinite(depth) & (depth > 0)
    if exclude is not None:
        ok = ok & ~exclude
    safe = jnp.where(ok, depth, 0.0)
    okf = ok.astype(jnp.float32)
    num = None
    den = None
    for ys, xs, wt in taps:
        t_num = wt * gather(safe, ys, xs)
        t_den = wt * gather(okf, ys, xs)
        num = t_num if num is None else num + t_num
        den = t_den if den is None else den + t_den
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def cells_to_points(depth, intrinsics, cam2world, image_hw, convention: str = "reference"):
    """Back-projects grid cells to world points.

    Args:
      depth: f32[..., h, w] grid z-depth (already resized).
      intrinsics: f32[..., 3, 3] in pixels of an image of size image_hw.
      cam2world: f32[..., 4, 4] OpenCV.
      image_hw: (H, W) of the image the intrinsics belong to.

    Returns:
      f32[..., h, w, 3] world points.
    """
    h, w = depth.shape[-2:]
    Kg = scale_intrinsics(intrinsics, image_hw, (h, w), convention)
    return unproject_grid(depth, Kg, cam2world)


def project_to_cells(points, valid, grid_intrinsics, cam2world, grid_hw):
    """Projects world points into a camera's cell grid.

    Args:
      points: f32[N, 3] world; valid: bool[N].
      grid_intrinsics: f32[3, 3] already scaled to the grid.
      cam2world: f32[4, 4] OpenCV.
      grid_hw: (h, w) static.

    Returns:
      (cell int32[N], z f32[N], inside bool[N]): ``cell = v * w + u`` of the rounded projection
      (h * w where not inside), camera-space z, and whether the point lands in the grid (valid,
      finite, z > 0, rounded cell in range).
    """
    h, w = grid_hw
    uv, z = project_points(points, grid_intrinsics, cam2world)
    u = round_half_even(uv[..., 0])
    v = round_half_even(uv[..., 1])
    inside = valid & (z > 0) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    ui = jnp.where(inside, u, 0.0).astype(jnp.int32)
    vi = jnp.where(inside, v, 0.0).astype(jnp.int32)
    cell = jnp.where(inside, vi * w + ui, h * w)
    return cell, z, inside


def round_half_even(x):
    """Nearest integer, exact .5 to even: the same values as ``jnp.round`` / ``torch.round``.

    Written with floor and exact comparisons (``x - floor(x)`` is exact in floating point), which
    vectorise on CPU, where ``jnp.round`` lowers to a scalar libm call (about 10x slower).
    """
    r = jnp.floor(x)
    f = x - r
    odd = (r - 2.0 * jnp.floor(r * 0.5)) != 0
    return jnp.where((f > 0.5) | ((f == 0.5) & odd), r + 1.0, r)


class ZBuffer(NamedTuple):
    """Result of :func:`zbuffer` over ``num_cells`` cells.

    winner: int32[num_cells] priority of the winning point (-1 where empty).
    depth: f32[num_cells] winning z (0 where empty).
    hit: bool[num_cells].
    """

    winner: jax.Array
    depth: jax.Array
    hit: jax.Array


def zbuffer(cell, z, inside, priority, num_cells: int) -> ZBuffer:
    """Deterministic nearest-point-per-cell selection.

    Args:
      cell: int32[N] target cell (ignored where not inside).
      z: f32[N] depth; smaller wins.
      inside: bool[N].
      priority: int32[N] >= 0, unique per point; among exact depth ties the largest wins.
      num_cells: static number of cells.

    Returns:
      ZBuffer. Two order-independent reductions (scatter-min of z, then scatter-max of the
      priority among points at the cell minimum), so every run on every device agrees.
    """
    zz = jnp.where(inside, z, jnp.inf)
    idx = jnp.where(inside, cell, num_cells)
    zmin = jnp.full((num_cells,), jnp.inf, jnp.float32).at[idx].min(zz, mode="drop")
    at_min = inside & (zz == zmin[jnp.clip(idx, 0, num_cells - 1)])
    prio = jnp.where(at_min, priority, -1)
    winner = jnp.full((num_cells,), -1, jnp.int32).at[jnp.where(at_min, idx, num_cells)].max(
        prio, mode="drop"
    )
    hit = winner >= 0
    return ZBuffer(winner=winner, depth=jnp.where(hit, zmin, 0.0), hit=hit)
