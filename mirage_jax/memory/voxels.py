"""Exact voxel keys and the order-independent primitives the memory is built on.

Everything here is pure JAX, shape-static, jit/vmap friendly and *deterministic*: only sorts,
scans, gathers, scatters with unique indices and min/max scatters are used (never a float
scatter-add, whose result depends on the order of the atomic updates on GPU).

Voxel keys are integer triples ``floor(p / voxel_size)`` compared lexicographically, so voxel
identity is exact: no hashing, no collisions, no packing into a single integer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "KEY_LIMIT",
    "SENTINEL",
    "VoxelIndex",
    "dense_voxel_ids",
    "lex_equal",
    "lex_less",
    "lex_searchsorted",
    "segmented_cumsum",
    "sort_keys",
    "voxel_keys",
]

# |floor(p / voxel_size)| must stay below this for a key to be representable (int32, with
# headroom so that the sentinel below never collides with a real key).
KEY_LIMIT = 2**30
# Key used for "no point" entries: sorts after every real key.
SENTINEL = jnp.iinfo(jnp.int32).max


def voxel_keys(points, voxel_size):
    """Integer voxel coordinates of points.

    Args:
      points: f32[..., 3] world points.
      voxel_size: edge length (Python float or f32 scalar, may be traced), > 0.

    Returns:
      (keys int32[..., 3], ok bool[...]): ``keys = floor(points / voxel_size)``; ``ok`` is False
      where a coordinate is non-finite or ``|points / voxel_size| >= 2**30`` (not representable);
      such keys are set to SENTINEL and must not be used.
    """
    q = jnp.floor(jnp.asarray(points, jnp.float32) / jnp.asarray(voxel_size, jnp.float32))
    ok = jnp.all(jnp.isfinite(q) & (jnp.abs(q) < KEY_LIMIT), axis=-1)
    keys = jnp.where(ok[..., None], q, 0.0).astype(jnp.int32)
    keys = jnp.where(ok[..., None], keys, SENTINEL)
    return keys, ok


def lex_less(a, b):
    """Lexicographic a < b for int32[..., 3] keys."""
    return (a[..., 0] < b[..., 0]) | (
        (a[..., 0] == b[..., 0])
        & ((a[..., 1] < b[..., 1]) | ((a[..., 1] == b[..., 1]) & (a[..., 2] < b[..., 2])))
    )


def lex_equal(a, b):
    """Elementwise equality of int32[..., 3] keys."""
    return jnp.all(a == b, axis=-1)


def sort_keys(keys, valid, *secondary):
    """Sorts keys lexicographically, invalid entries last (as SENTINEL).

    Args:
      keys: int32[M, 3]; valid: bool[M]; secondary: extra int32[M] sort keys (tie-breaks,
        compared after the voxel key, in the given order).

    Returns:
      (perm int32[M], sorted_keys int32[M, 3]): ``sorted_keys = where(valid, keys, SENTINEL)[perm]``.
      The order is total (the original index is the last key), hence deterministic.
    """
    m = keys.shape[0]
    k = jnp.where(valid[:, None], keys, SENTINEL)
    iota = jnp.arange(m, dtype=jnp.int32)
    ops = (k[:, 0], k[:, 1], k[:, 2], *secondary, iota)
    out = lax.sort(ops, num_keys=len(ops))
    perm = out[-1]
    return perm, jnp.stack(out[:3], axis=-1)


def lex_searchsorted(sorted_keys, queries):
    """Lower bound of each query in lexicographically sorted keys (binary search).

    Args:
      sorted_keys: int32[M, 3], sorted (SENTINEL padding at the end is fine).
      queries: int32[Q, 3].

    Returns:
      int32[Q]: the first index i with ``sorted_keys[i] >= query`` (M when none). Work is
      O(Q log M) gathers from a table of M rows; no sort of the queries is needed.
    """
    m = sorted_keys.shape[0]
    n_iter = max(1, math.ceil(math.log2(m + 1)))
    q = queries.shape[0]
    lo = jnp.zeros((q,), jnp.int32)
    hi = jnp.full((q,), m, jnp.int32)

    def body(_, carry):
        lo, hi = carry
        active = lo < hi
        mid = (lo + hi) // 2
        probe = sorted_keys[jnp.clip(mid, 0, m - 1)]
        go_right = lex_less(probe, queries)
        lo = jnp.where(active & go_right, mid + 1, lo)
        hi = jnp.where(active & ~go_right, mid, hi)
        return lo, hi

    lo, _ = lax.fori_loop(0, n_iter, body, (lo, hi))
    return lo


def segmented_cumsum(values, starts):
    """Inclusive cumulative sum that restarts at every ``starts`` row (deterministic).

    Args:
      values: f32[M, ...]; starts: bool[M] (True where a new segment begins).

    Returns:
      f32[M, ...]: ``out[i] = sum(values[j] for j in [s, i])`` where s is the last start <= i.
      Sums never cross a segment boundary, so the result is as accurate as a per-segment sum
      and independent of the device's scatter order (it is a fixed-tree associative scan).
    """
    flags = starts.reshape(starts.shape + (1,) * (values.ndim - 1))

    def combine(a, b):
        fa, va = a
        fb, vb = b
        return fa | fb, jnp.where(fb, vb, va + vb)

    _, out = lax.associative_scan(combine, (jnp.broadcast_to(flags, values.shape), values), axis=0)
    return out


class VoxelIndex(NamedTuple):
    """Dense voxel ids of a point set: points in the same voxel share an id.

    ids: int32[N], in [0, num) for keyed points, -1 for invalid points.
    num: int32[], number of distinct voxels.
    """

    ids: jax.Array
    num: jax.Array


def dense_voxel_ids(points, valid, voxel_size) -> VoxelIndex:
    """Assigns every valid point the rank of its voxel among the distinct occupied voxels.

    Exact (one lexicographic sort of the integer keys, no hashing). Ids follow the
    lexicographic order of the voxel keys.

    Args:
      points: f32[N, 3]; valid: bool[N]; voxel_size: float > 0.
    """
    keys, ok = voxel_keys(points, voxel_size)
    ok = ok & valid
    perm, sk = sort_keys(keys, ok)
    ok_s = ok[perm]
    prev_same = jnp.concatenate([jnp.zeros((1,), bool), lex_equal(sk[1:], sk[:-1])])
    head = ok_s & ~prev_same
    seg = jnp.cumsum(head.astype(jnp.int32)) - 1
    ids_sorted = jnp.where(ok_s, seg, -1)
    ids = jnp.zeros_like(ids_sorted).at[perm].set(ids_sorted, unique_indices=True)
    return VoxelIndex(ids=ids, num=jnp.sum(head.astype(jnp.int32)))
