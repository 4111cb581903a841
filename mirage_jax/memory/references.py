"""Reference-frame retrieval by voxel IoU of frustum-visible memory points (spec section 2).

For the target poses the memory points inside the frusta are collected (no occlusion test,
:func:`mirage_jax.memory.retrieval.frustum_visible`); each earlier generated frame's visible set
is compared with it by IoU of the sets of occupied voxels (voxel 0.1); the frames with IoU above
the threshold (0.04) are ranked and the top k (4) are returned.

Voxel sets are exact: integer keys ``floor(p / voxel_size)`` made unique by a lexicographic sort
(no hashing, no collisions, no Python sets). Two representations are supported:

* visibility masks over the memory's slots, bool[F, N] (dense voxel ids of the memory's points,
  one sort; the IoU is a count over an occupancy table), and
* explicit per-frame :class:`VoxelSet` s (sorted unique keys), which can be stored when a frame is
  generated and compared later even after its points were evicted from the ring.

Ranking: IoU descending; equal IoU goes to the more recent frame (higher index); frames with
``IoU <= threshold`` are not returned ("above the threshold" is strict). Missing results are
index -1 with ``found = False``. Everything is vectorised in JAX and deterministic.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.memory import voxels
from mirage_jax.memory._internal import TRACE_COUNTS, LatentMemory, LatentMemoryError, check_memory, without_config

__all__ = [
    "References",
    "VoxelSet",
    "frame_voxel_sets",
    "retrieve_references",
    "voxel_iou",
    "voxel_set",
    "voxel_set_iou",
]


class VoxelSet(NamedTuple):
    """A set of voxels: keys int32[..., K, 3] sorted lexicographically and unique in the first
    ``count`` rows, padded with SENTINEL; count int32[...]."""

    keys: jax.Array
    count: jax.Array


class References(NamedTuple):
    """Retrieved reference frames: indices int32[k] (-1 = none), iou f32[k], found bool[k]."""

    indices: jax.Array
    iou: jax.Array
    found: jax.Array


@jax.jit
def voxel_set(points, mask, voxel_size=0.1) -> VoxelSet:
    """The exact set of voxels occupied by ``points[mask]``.

    Args:
      points: f32[N, 3]; mask: bool[N]; voxel_size: > 0.

    Returns:
      VoxelSet with keys int32[N, 3] (static size N) and count int32[].
    """
    keys, ok = voxels.voxel_keys(points, voxel_size)
    ok = ok & mask
    perm, sk = voxels.sort_keys(keys, ok)
    ok_s = ok[perm]
    n = ok.shape[0]
    same_prev = jnp.concatenate([jnp.zeros((1,), bool), voxels.lex_equal(sk[1:], sk[:-1])])
    head = ok_s & ~same_prev
    rank = jnp.cumsum(head.astype(jnp.int32)) - 1
    idx = jnp.where(head, rank, n + jnp.arange(n, dtype=jnp.int32))
    out = jnp.full((n, 3), voxels.SENTINEL, jnp.int32).at[idx].set(sk, mode="drop", unique_indices=True)
    return VoxelSet(keys=out, count=jnp.sum(head.astype(jnp.int32)))


@jax.jit
def voxel_set_iou(a: VoxelSet, b: VoxelSet):
    """IoU of two voxel sets (|A & B| / |A | B|, 0 when both are empty).

    ``a`` may carry leading batch dimensions (e.g. [F] frames); ``b`` is a single set. The
    intersection is counted exactly by sorting the concatenated keys and counting equal
    neighbours (each set is unique, so a duplicate is an element of both).
    """
    if a.keys.ndim > 2:
        return jax.vmap(lambda k, c: voxel_set_iou(VoxelSet(k, c), b))(a.keys, a.count)
    ka = jnp.where((jnp.arange(a.keys.shape[0]) < a.count)[:, None], a.keys, voxels.SENTINEL)
    kb = jnp.where((jnp.arange(b.keys.shape[0]) < b.count)[:, None], b.keys, voxels.SENTINEL)
    cat = jnp.concatenate([ka, kb], axis=0)
    ok = jnp.all(cat != voxels.SENTINEL, axis=-1)
    _, sk = voxels.sort_keys(cat, ok)
    real = jnp.all(sk != voxels.SENTINEL, axis=-1)
    dup = real[1:] & voxels.lex_equal(sk[1:], sk[:-1])
    inter = jnp.sum(dup.astype(jnp.int32))
    union = a.count + b.count - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)


@jax.jit
def frame_voxel_sets(mem: LatentMemory, frame_visible, voxel_size=0.1) -> VoxelSet:
    """Voxel sets of several visibility masks over the memory: bool[F, N] -> VoxelSet [F]."""
    return jax.vmap(lambda m: voxel_set(mem.points, m & mem.valid, voxel_size))(frame_visible)


def _occupancy(ids, visible):
    n = ids.shape[0]
    idx = jnp.where(visible & (ids >= 0), ids, n)
    return jnp.zeros((n,), bool).at[idx].set(True, mode="drop")


@jax.jit
def voxel_iou(mem: LatentMemory, visible_a, visible_b, voxel_size=0.1):
    """Voxel IoU between visibility masks over the memory's slots.

    Args:
      visible_a: bool[..., N] (e.g. [F, N] per-frame visible sets).
      visible_b: bool[N] or bool[V, N] (union over V, e.g. a chunk's target cameras).

    Returns:
      f32[...] IoU of the voxel sets of ``points[visible_a]`` and ``points[visible_b]``.
    """
    index = voxels.dense_voxel_ids(mem.points, mem.valid, voxel_size)
    vb = visible_b if visible_b.ndim == 1 else jnp.any(visible_b, axis=0)
    occ_b = _occupancy(index.ids, vb)
    lead = visible_a.shape[:-1]
    occ_a = jax.vmap(lambda v: _occupancy(index.ids, v))(visible_a.reshape((-1, visible_a.shape[-1])))
    inter = jnp.sum((occ_a & occ_b).astype(jnp.int32), axis=-1)
    union = jnp.sum((occ_a | occ_b).astype(jnp.int32), axis=-1)
    iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)
    return iou.reshape(lead)


def _top_k(iou, frame_valid, threshold, k):
    F = iou.shape[0]
    eligible = frame_valid & (iou > threshold)
    neg_iou = jnp.where(eligible, -iou, jnp.inf)
    neg_idx = -jnp.arange(F, dtype=jnp.int32)
    s_neg_iou, s_neg_idx = jax.lax.sort((neg_iou, neg_idx), num_keys=2)
    found = jnp.isfinite(s_neg_iou)
    idx = jnp.where(found, -s_neg_idx, -1)
    val = jnp.where(found, -s_neg_iou, 0.0)
    if k > F:
        pad = k - F
        idx = jnp.concatenate([idx, jnp.full((pad,), -1, jnp.int32)])
        val = jnp.concatenate([val, jnp.zeros((pad,), val.dtype)])
        found = jnp.concatenate([found, jnp.zeros((pad,), bool)])
    return References(indices=idx[:k], iou=val[:k].astype(jnp.float32), found=found[:k])


def _retrieve_masks(mem, frame_visible, target_visible, frame_valid, threshold, voxel_size, k):
    TRACE_COUNTS["retrieve_references"] += 1
    iou = voxel_iou(mem, frame_visible, target_visible, voxel_size)
    return _top_k(iou, frame_valid, threshold, k)


def _retrieve_sets(mem, frames, target, frame_valid, threshold, voxel_size, k):
    TRACE_COUNTS["retrieve_references"] += 1
    if not isinstance(target, VoxelSet):
        tv = target if target.ndim == 1 else jnp.any(target, axis=0)
        target = voxel_set(mem.points, tv & mem.valid, voxel_size)
    iou = voxel_set_iou(frames, target)
    return _top_k(iou, frame_valid, threshold, k)


_retrieve_masks_jit = jax.jit(_retrieve_masks, static_argnames=("k",))
_retrieve_sets_jit = jax.jit(_retrieve_sets, static_argnames=("k",))


def retrieve_references(
    mem: LatentMemory,
    frame_visible,
    target_visible,
    k: int = 4,
    threshold: float = 0.04,
    voxel_size: float = 0.1,
    frame_valid=None,
) -> References:
    """Top-k earlier frames by voxel IoU with the target's visible set.

    Args:
      mem: the memory whose points the masks refer to.
      frame_visible: bool[F, N] per-frame visibility masks over the memory's slots, or a
        VoxelSet with keys [F, K, 3] (from :func:`voxel_set` / :func:`frame_voxel_sets`).
      target_visible: bool[N] or bool[V, N] (union of the target cameras' frusta), or a VoxelSet
        (only with VoxelSet frames).
      k: number of references (static); threshold: IoU must exceed it; voxel_size: voxel edge.
      frame_valid: optional bool[F] (False = padding frame, never returned).

    Returns:
      References(indices int32[k], iou f32[k], found bool[k]); indices are -1 where not found.
    """
    check_memory(mem)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise LatentMemoryError(f"k must be a positive int, got {k!r}")
    if not float(voxel_size) > 0:
        raise LatentMemoryError(f"voxel_size must be > 0, got {voxel_size}")
    N = mem.capacity
    if isinstance(frame_visible, VoxelSet):
        if frame_visible.keys.ndim != 3 or frame_visible.keys.shape[-1] != 3:
            raise LatentMemoryError(
                f"frame_visible: expected VoxelSet keys [F, K, 3], got {list(frame_visible.keys.shape)}"
            )
        F = frame_visible.keys.shape[0]
        if not isinstance(target_visible, VoxelSet):
            _check_mask(target_visible, "target_visible", N, allow_batch=True)
        fn = _retrieve_sets_jit
    else:
        if isinstance(target_visible, VoxelSet):
            raise LatentMemoryError("target_visible: a VoxelSet target needs VoxelSet frames")
        F = _check_mask(frame_visible, "frame_visible", N, allow_batch=True, need_batch=True)
        _check_mask(target_visible, "target_visible", N, allow_batch=True)
        fn = _retrieve_masks_jit
    if frame_valid is None:
        frame_valid = jnp.ones((F,), bool)
    elif tuple(np.shape(frame_valid)) != (F,) or jnp.asarray(frame_valid).dtype != jnp.bool_:
        raise LatentMemoryError(f"frame_valid: expected bool[{F}], got {np.shape(frame_valid)}")
    return fn(
        without_config(mem),
        frame_visible,
        target_visible,
        jnp.asarray(frame_valid),
        jnp.asarray(threshold, jnp.float32),
        jnp.asarray(voxel_size, jnp.float32),
        k=k,
    )


def _check_mask(m, name, n, allow_batch=False, need_batch=False):
    shape = tuple(np.shape(m))
    dtype = jnp.asarray(m).dtype if not hasattr(m, "dtype") else m.dtype
    ok_shape = (len(shape) == 1 and not need_batch) or (allow_batch and len(shape) == 2)
    if not ok_shape or shape[-1] != n:
        want = f"[F, {n}]" if need_batch else (f"[{n}] or [V, {n}]" if allow_batch else f"[{n}]")
        raise LatentMemoryError(f"{name}: expected bool{want} over the memory's slots, got {list(shape)}")
    if dtype != jnp.bool_:
        raise LatentMemoryError(f"{name}: expected dtype bool, got {dtype}")
    return shape[0]
