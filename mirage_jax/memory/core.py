"""The functional latent spatial memory: a fixed-capacity pytree of 3D points with feature vectors.

Lifecycle (spec section 1): ``mem = empty(...)`` -> per chunk ``read`` -> denoise -> ``write``.
Every function is pure: it takes a :class:`LatentMemory` and returns a new one; the memory passes
through ``jax.jit``, ``jax.vmap`` (a batch of memories) and ``lax.scan``.

Writing a frame (spec section 2, reference semantics; see :mod:`mirage_jax.memory.projection`):
depth [H, W] is resized to the latent grid [h, w] (bilinear, half-pixel centres, no
antialiasing), K is scaled by w/W and h/H, every cell is back-projected to a world point that
carries ``latent[v, u]``; a cell is valid when its depth is finite and > 0 and the exclusion
mask (nearest-resized) does not exclude it.

Capacity (the reference is an unbounded list; ours is bounded and never silently lossy):

* ``policy="ring"`` (default): valid cells take the next slots of a ring buffer in write order
  (frame, then row-major cell order); when the memory is full the oldest entries are
  overwritten first. If one write holds more valid cells than the capacity, its earliest cells
  are dropped (and counted) so that the memory holds its last ``capacity`` cells, in the slots
  that one-by-one writes would have given them.
* ``policy="fuse"``: voxel fusion with ``voxel_size``, combined with the ring. The new points
  of a write are grouped by voxel ``floor(p / voxel_size)`` (exact integer keys, compared
  lexicographically: no hashing). A group whose voxel is already held by a valid entry is
  fused into that entry *in place* instead of taking a new slot, so revisiting a place does not
  grow the memory; the other groups become new entries, taking ring slots as above (when full,
  the earliest *inserted* entries are overwritten first; an entry's ``step`` records its last
  update). ``fuse_mode="average"`` keeps a running mean of the features weighted by the number
  of observations (``weight``); the entry keeps the position of its first observation, so its
  voxel never drifts. ``fuse_mode="replace"`` replaces the entry by the newest observation: the
  mean feature of the group's members from the latest frame of the write, at the position of
  the first of them in row-major order. Within one write the new entries take ring slots in
  lexicographic voxel order. If a slot is both fused and reached by the ring in the same write,
  the ring wins (the entry is evicted, and counted). If several valid entries share a voxel
  (written earlier with ``policy="ring"``), the lowest slot is fused. Cost: O(M log M + N log M)
  per write of M cells into N slots (every held voxel is looked up in the write's sorted keys),
  against O(M) for ``ring``.

Counters (int32, cumulative): ``written`` valid cells received, ``rejected`` cells not stored
because they were invalid (depth <= 0, non-finite, excluded, or not representable as a voxel
key), ``inserted`` new entries, ``fused`` observations merged into an entry (existing, or another
cell of the same voxel in the same write), ``dropped`` valid observations that did not fit,
``evicted`` valid entries overwritten; ``written = inserted + fused + dropped`` always holds and
``count`` is the number of valid entries. ``strict=True`` raises :class:`MemoryOverflowError`
instead of evicting or dropping (the caller's memory is left untouched).

Non-finite depth: :func:`write` raises :class:`LatentMemoryError` in its host-side check when
called with concrete arrays. When it runs inside a traced context (the caller's jit / vmap /
scan) values cannot be checked, and non-finite grid depths are treated as invalid cells
explicitly (counted in ``rejected``): a NaN or infinite point is never stored.

Determinism: every write and read is bit-identical across repeated runs, under the caller's jit
(cameras passed as arguments or closed over as constants), vmap over memories, and lax.scan
(tests/memory/test_memory_core.py); only order-independent reductions are used (sorts, min/max
scatters, scatters with unique indices, fixed-order scans).

Static options (``convention``, ``depth_resize``, ``policy``, ``fuse_mode``) are part of the jit
cache key: calls with the same shapes and options reuse one compilation. ``voxel_size`` is passed
as a traced scalar and ``strict`` is a host-side check, so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.memory import voxels
from mirage_jax.memory._internal import (  # noqa: F401 - LatentMemory & co. are re-exported here
    COUNTERS,
    DEFAULT_CONFIG,
    FUSE_MODES,
    POLICIES,
    TRACE_COUNTS,
    LatentMemory,
    LatentMemoryError,
    MemoryConfig,
    MemoryFileError,
    MemoryOverflowError,
    check_camera,
    check_finite,
    check_memory,
    is_traced,
    shape_dtype,
    without_config,
)
from mirage_jax.memory.projection import (
    cells_to_points,
    resize_depth,
    resize_mask_nearest,
)

__all__ = [
    "COUNTERS",
    "FUSE_MODES",
    "POLICIES",
    "TRACE_COUNTS",
    "LatentMemory",
    "LatentMemoryError",
    "MemoryConfig",
    "MemoryFileError",
    "MemoryOverflowError",
    "counters",
    "empty",
    "size",
    "write",
    "write_frames",
]


def empty(capacity: int, channels: int, dtype=jnp.float32, **options) -> LatentMemory:
    """An empty memory.

    Args:
      capacity: N, number of point slots (static).
      channels: C, feature channels (48 for Wan2.2 latents; 3 for an RGB cache).
      dtype: feature dtype (float32, bfloat16, float16; uint8 for RGB caches).
      **options: defaults stored in ``mem.config`` (see :class:`MemoryConfig`).
    """
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise LatentMemoryError(f"capacity must be a positive int, got {capacity!r}")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise LatentMemoryError(f"channels must be a positive int, got {channels!r}")
    if capacity >= 2**31 - 1:
        raise LatentMemoryError(f"capacity must be < 2**31 - 1 (int32 slot indices), got {capacity}")
    dtype = jnp.dtype(dtype)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise LatentMemoryError(f"dtype must be a float or integer dtype, got {dtype}")
    config = MemoryConfig().with_options(**options)
    n, c = int(capacity), int(channels)
    # Every leaf is its own buffer (shared buffers could not be donated).
    scalars = {name: jnp.zeros((), jnp.int32) for name in ("cursor", "count", "frames") + COUNTERS}
    return LatentMemory(
        points=jnp.zeros((n, 3), jnp.float32),
        features=jnp.zeros((n, c), dtype),
        valid=jnp.zeros((n,), bool),
        step=jnp.full((n,), -1, jnp.int32),
        weight=jnp.zeros((n,), jnp.float32),
        **scalars,
        config=config,
    )


def size(mem: LatentMemory):
    """Number of valid entries (int32[], or [B] for a batch of memories)."""
    return mem.count


def counters(mem: LatentMemory) -> dict[str, Any]:
    """Host-side dict of the counters (Python ints, or lists for a batch of memories)."""
    out = {}
    for name in ("count", "frames", "cursor") + COUNTERS:
        v = np.asarray(getattr(mem, name))
        out[name] = int(v) if v.ndim == 0 else v.tolist()
    return out


def _check_frames(mem, latents, depths, intrinsics, cam2world, exclude, validate, frames_axis):
    """Shape/dtype checks (always) and value checks (concrete inputs, ``validate=True``)."""
    lat_name, dep_name, ex_name = ("latents", "depths", "exclude") if frames_axis else ("latent", "depth", "exclude")
    l_shape, l_dtype = shape_dtype(latents, lat_name)
    d_shape, d_dtype = shape_dtype(depths, dep_name)
    lead = l_shape[:1] if frames_axis else ()
    want_l = "[T, h, w, C]" if frames_axis else "[h, w, C]"
    want_d = "[T, H, W]" if frames_axis else "[H, W]"
    if len(l_shape) != len(lead) + 3:
        raise LatentMemoryError(f"{lat_name}: expected shape {want_l} (channels-last), got {list(l_shape)}")
    if len(d_shape) != len(lead) + 2:
        raise LatentMemoryError(f"{dep_name}: expected shape {want_d}, got {list(d_shape)}")
    if d_shape[: len(lead)] != lead:
        raise LatentMemoryError(
            f"{dep_name}: {d_shape[0]} frames but {lat_name} has {l_shape[0]} "
            f"(shapes {list(d_shape)} vs {list(l_shape)})"
        )
    if frames_axis and l_shape[0] < 1:
        raise LatentMemoryError(f"{lat_name}: need at least one frame, got shape {list(l_shape)}")
    h, w, c = l_shape[-3:]
    H, W = d_shape[-2:]
    if c != mem.channels:
        raise LatentMemoryError(
            f"{lat_name}: {c} channels but the memory holds {mem.channels} (shape {list(l_shape)})"
        )
    if min(h, w, H, W) < 1:
        raise LatentMemoryError(f"{lat_name} / {dep_name}: empty grid ({list(l_shape)}, {list(d_shape)})")
    if H % h or W % w:
        raise LatentMemoryError(
            f"{dep_name}: size {H}x{W} is not an integer multiple of the latent grid {h}x{w} "
            f"({lat_name} {list(l_shape)}); the reference resizes by an integer factor (16 for Wan2.2)"
        )
    mem_float = jnp.issubdtype(mem.dtype, jnp.floating)
    if mem_float and not jnp.issubdtype(l_dtype, jnp.floating):
        raise LatentMemoryError(f"{lat_name}: expected a float dtype (normalised latents), got {l_dtype}")
    if not mem_float and l_dtype != mem.dtype:
        raise LatentMemoryError(f"{lat_name}: the memory stores {mem.dtype}; got {l_dtype} (convert explicitly)")
    if not jnp.issubdtype(d_dtype, jnp.floating):
        raise LatentMemoryError(f"{dep_name}: expected a float dtype (z-depth), got {d_dtype}")
    if exclude is not None:
        e_shape, e_dtype = shape_dtype(exclude, ex_name)
        if e_shape != d_shape:
            raise LatentMemoryError(f"{ex_name}: expected shape {list(d_shape)} like {dep_name}, got {list(e_shape)}")
        if e_dtype != jnp.bool_:
            raise LatentMemoryError(f"{ex_name}: expected dtype bool (True = do not store), got {e_dtype}")
    intrinsics, cam2world = check_camera(intrinsics, cam2world, lead, validate, image_hw=(H, W))
    if validate and not is_traced(depths):
        check_finite(depths, dep_name)
    if validate and mem_float and not is_traced(latents):
        check_finite(latents, lat_name)
    return intrinsics, cam2world


# --------------------------------------------------------------------------------------------
# The write kernel.
# --------------------------------------------------------------------------------------------


def _to_storage(x, dtype):
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return jnp.clip(jnp.round(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _frame_points(latents, depths, intrinsics, cam2world, exclude, cfg: MemoryConfig):
    """[T, ...] inputs -> (points f32[M, 3], feats [M, C], ok bool[M], t int32[M]), M = T h w."""
    T, h, w, C = latents.shape
    H, W = depths.shape[-2:]
    d = resize_depth(depths, (h, w), cfg.depth_resize, exclude)
    K = jnp.broadcast_to(jnp.asarray(intrinsics, jnp.float32), (T, 3, 3))
    pts = cells_to_points(d, K, jnp.asarray(cam2world, jnp.float32), (H, W), cfg.convention)
    ok = jnp.isfinite(d) & (d > 0) & jnp.all(jnp.isfinite(pts), axis=-1)
    if exclude is not None:
        ok = ok & ~resize_mask_nearest(exclude, (h, w))
    m = T * h * w
    t = jnp.repeat(jnp.arange(T, dtype=jnp.int32), h * w)
    pts = jnp.where(ok[..., None], pts, 0.0).reshape(m, 3)
    return pts, latents.reshape(m, C), ok.reshape(m), t


def _commit(mem: LatentMemory, rows, n_ok, n_rej, T):
    """Applies one write's rows to the memory.

    ``rows`` (all [M]-shaped, M = cells in the write) holds one row per group to store:
      new bool: a new entry, taking the next ring slot; rank int32: its order among the new
      entries of this write (0..n_new-1); n_new int32[]: number of new entries;
      fuse bool: an update in place of the held entry in slot ``src``;
      points, feats, weight, step: the entry's values; obs int32: observations it represents.
    """
    N = mem.capacity
    new, rank, n_new = rows["new"], rows["rank"], rows["n_new"]
    M = new.shape[0]
    oob = N + jnp.arange(M, dtype=jnp.int32)  # distinct out-of-range indices: dropped by scatters
    # New entry r goes to slot cursor + r (mod N), as if the entries were written one by one;
    # when more than N arrive at once, the first ones would be overwritten within this same
    # call: they are dropped (and counted) instead.
    n_drop = jnp.maximum(n_new - N, 0)
    keep = new & (rank >= n_drop)
    slot = (mem.cursor + rank) % N
    ring_idx = jnp.where(keep, slot, oob)
    evicted = jnp.sum((keep & mem.valid[jnp.clip(slot, 0, N - 1)]).astype(jnp.int32))
    inserted = jnp.sum(keep.astype(jnp.int32))
    dropped = jnp.sum(jnp.where(new & ~keep, rows["obs"], 0))
    feats = _to_storage(rows["feats"], mem.dtype)
    fields = {"points": rows["points"], "features": feats, "step": rows["step"], "weight": rows["weight"]}
    out = {}
    for name, vals in fields.items():
        arr = getattr(mem, name)
        if "fuse" in rows:  # in-place updates first (distinct slots) ...
            arr = arr.at[jnp.where(rows["fuse"], rows["src"], oob)].set(vals, mode="drop", unique_indices=True)
        # ... then the ring: a slot both fused and reached by the ring is overwritten (evicted).
        out[name] = arr.at[ring_idx].set(vals, mode="drop", unique_indices=True)
    return mem.replace(
        **out,
        valid=mem.valid.at[ring_idx].set(True, mode="drop", unique_indices=True),
        cursor=((mem.cursor + n_new) % N).astype(jnp.int32),
        count=mem.count + inserted - evicted,
        frames=mem.frames + T,
        written=mem.written + n_ok,
        rejected=mem.rejected + n_rej,
        inserted=mem.inserted + inserted,
        fused=mem.fused + (n_ok - inserted - dropped),
        dropped=mem.dropped + dropped,
        evicted=mem.evicted + evicted,
    )


def _write_ring(mem, pts, feats, ok, t, n_ok, n_rej, T):
    M = ok.shape[0]
    rows = {
        "new": ok,
        "rank": jnp.cumsum(ok.astype(jnp.int32)) - 1,
        "n_new": n_ok,
        "points": pts,
        "feats": feats,
        "weight": jnp.ones((M,), jnp.float32),
        "step": mem.frames + t,
        "obs": jnp.ones((M,), jnp.int32),
    }
    return _commit(mem, rows, n_ok, n_rej, T)


def _write_fuse(mem, pts, feats, ok, t, n_ok, n_rej, T, hw, cfg: MemoryConfig, voxel_size):
    N = mem.capacity
    M = ok.shape[0]
    C = feats.shape[-1]
    keys, _ = voxels.voxel_keys(pts, voxel_size)
    local = jnp.arange(M, dtype=jnp.int32) - t * hw
    if cfg.fuse_mode == "replace":  # the latest frame first, then row-major order
        secondary = (T - 1 - t) * hw + local
    else:  # the earliest frame first, then row-major order
        secondary = t * hw + local
    perm, sk = voxels.sort_keys(keys, ok, secondary)
    ok_s = ok[perm]
    t_s = t[perm]
    pos = jnp.arange(M, dtype=jnp.int32)
    same_prev = jnp.concatenate([jnp.zeros((1,), bool), voxels.lex_equal(sk[1:], sk[:-1])])
    head = ok_s & ~same_prev
    nxt_head = jnp.concatenate([head[1:] | ~ok_s[1:], jnp.ones((1,), bool)])
    tail = ok_s & nxt_head
    seg = jnp.cumsum(head.astype(jnp.int32)) - 1
    head_pos = jax.lax.cummax(jnp.where(head, pos, -1), axis=0)
    head_pos_c = jnp.clip(head_pos, 0, M - 1)
    t_head = t_s[head_pos_c]
    member = ok_s & (t_s == t_head) if cfg.fuse_mode == "replace" else ok_s
    f_s = feats[perm].astype(jnp.float32)
    vals = jnp.concatenate([f_s * member[:, None], member[:, None].astype(jnp.float32)], axis=-1)
    csum = voxels.segmented_cumsum(vals, head | ~ok_s)
    n_mem = csum[:, C]
    mean = csum[:, :C] / jnp.maximum(n_mem, 1.0)[:, None]
    obs = pos - head_pos + 1
    rep_points = pts[perm][head_pos_c]

    # Which held entry (if any) each group fuses into: look every valid memory entry's voxel up
    # in the write's sorted keys (O(N log M)); per group keep the lowest matching slot (a min
    # scatter: order-independent).
    mk, mk_ok = voxels.voxel_keys(mem.points, voxel_size)
    j = voxels.lex_searchsorted(sk, mk)
    jc = jnp.clip(j, 0, M - 1)
    match = mem.valid & mk_ok & (j < M) & ok_s[jc] & voxels.lex_equal(sk[jc], mk)
    src_of_seg = jnp.full((M,), N, jnp.int32).at[jnp.where(match, seg[jc], M)].min(
        jnp.arange(N, dtype=jnp.int32), mode="drop"
    )
    c_src = jnp.where(tail, src_of_seg[jnp.clip(seg, 0, M - 1)], N)
    held = c_src < N
    src_c = jnp.clip(c_src, 0, N - 1)
    old_w = jnp.where(held, mem.weight[src_c], 0.0)
    old_f = mem.features[src_c].astype(jnp.float32)
    if cfg.fuse_mode == "average":
        new_w = old_w + n_mem
        c_feats = (old_w[:, None] * old_f + csum[:, :C]) / jnp.maximum(new_w, 1.0)[:, None]
        c_feats = jnp.where(held[:, None], c_feats, mean)
        c_points = jnp.where(held[:, None], mem.points[src_c], rep_points)
        c_weight = new_w
    else:
        c_feats = mean
        c_points = rep_points
        c_weight = n_mem
    is_new = tail & ~held
    rows = {
        "new": is_new,
        "rank": jnp.cumsum(is_new.astype(jnp.int32)) - 1,
        "n_new": jnp.sum(is_new.astype(jnp.int32)),
        "fuse": tail & held,
        "src": c_src,
        "points": c_points,
        "feats": c_feats,
        "weight": c_weight,
        "step": mem.frames + jnp.maximum(t_head, t_s),  # the latest frame among the members
        "obs": obs,
    }
    return _commit(mem, rows, n_ok, n_rej, T)


def _write_impl(mem: LatentMemory, latents, depths, intrinsics, cam2world, exclude, voxel_size, cfg: MemoryConfig):
    TRACE_COUNTS["write"] += 1
    T, h, w, _ = latents.shape
    # Cameras closed over as constants by a caller's jit must give the same bits as cameras
    # passed as arguments: keep XLA from constant-folding them (e.g. x / fx -> x * (1 / fx)).
    intrinsics, cam2world = jax.lax.optimization_barrier(
        (jnp.asarray(intrinsics, jnp.float32), jnp.asarray(cam2world, jnp.float32))
    )
    pts, feats, ok, t = _frame_points(latents, depths, intrinsics, cam2world, exclude, cfg)
    if cfg.policy == "fuse":
        _, key_ok = voxels.voxel_keys(pts, voxel_size)
        ok = ok & key_ok
    n_ok = jnp.sum(ok.astype(jnp.int32))
    n_rej = ok.shape[0] - n_ok
    if cfg.policy == "ring":
        return _write_ring(mem, pts, feats, ok, t, n_ok, n_rej, T)
    return _write_fuse(mem, pts, feats, ok, t, n_ok, n_rej, T, h * w, cfg, voxel_size)


_write_jit = jax.jit(_write_impl, static_argnames=("cfg",))
_write_jit_donated = jax.jit(_write_impl, static_argnames=("cfg",), donate_argnums=(0,))


def write_frames(
    mem: LatentMemory,
    latents,
    depths,
    intrinsics,
    cam2world,
    exclude=None,
    *,
    validate: bool = True,
    donate: bool = False,
    **options,
) -> LatentMemory:
    """Writes T frames at once.

    With ``policy="ring"`` the result equals T calls of :func:`write` in order (same slots,
    contents and cursor), except for the counters when one call brings more valid cells than the
    capacity: cells that sequential writes would insert and then overwrite within the call are
    counted as ``dropped`` instead of ``inserted`` + ``evicted``.

    Args:
      mem: the memory.
      latents: [T, h, w, C] normalised latents (float; cast to the memory's dtype).
      depths: f32[T, H, W] z-depth of each frame's image, 0 where unknown; H = k h, W = k' w.
      intrinsics: f32[3, 3] (shared) or [T, 3, 3], in pixels of the depth maps.
      cam2world: f32[T, 4, 4] OpenCV camera-to-world.
      exclude: optional bool[T, H, W], True = do not store (dynamic objects, sky).
      validate: run host-side value checks (finite depth/latents, valid K and poses, and K
        belonging to the depth maps: principal point with cx in [-W, 2W], cy in [-H, 2H]) when
        the inputs are concrete; shapes and dtypes are always checked. Under the caller's jit /
        vmap / scan (traced values) nothing is checked: non-finite depths become invalid cells
        (counted in ``rejected``) and K of another resolution stores misplaced points.
      donate: donate ``mem``'s buffers (in-place update; ``mem`` must not be used afterwards).
      **options: per-call overrides of ``mem.config`` (convention, depth_resize, policy,
        voxel_size, fuse_mode, strict); the returned memory keeps ``mem.config``.

    Returns:
      The updated memory. With ``fuse`` the frames of one call are fused together (same set of
      entries and features as sequential writes, up to slot order and float rounding).
    """
    return _write(mem, latents, depths, intrinsics, cam2world, exclude, validate, donate, options, True)


def write(
    mem: LatentMemory,
    latent,
    depth,
    intrinsics,
    cam2world,
    exclude=None,
    *,
    validate: bool = True,
    donate: bool = False,
    **options,
) -> LatentMemory:
    """Writes one frame (spec section 2).

    Args:
      mem: the memory.
      latent: [h, w, C] normalised latents of the frame (float; cast to the memory's dtype).
      depth: f32[H, W] z-depth of the frame's image, 0 where unknown; H and W must be integer
        multiples of h and w (16x for Wan2.2).
      intrinsics: f32[3, 3] in pixels of the depth map.
      cam2world: f32[4, 4] OpenCV camera-to-world.
      exclude: optional bool[H, W], True = do not store (dynamic objects, sky).
      validate, donate, **options: see :func:`write_frames`.

    Returns:
      The updated memory (``mem`` is unchanged unless donated).
    """
    return _write(mem, latent, depth, intrinsics, cam2world, exclude, validate, donate, options, False)


def _write(mem, latents, depths, intrinsics, cam2world, exclude, validate, donate, options, frames_axis):
    check_memory(mem)
    cfg = mem.config.with_options(**options)
    intrinsics, cam2world = _check_frames(
        mem, latents, depths, intrinsics, cam2world, exclude, validate, frames_axis
    )
    traced = is_traced(mem, latents, depths, intrinsics, cam2world, exclude)
    if cfg.strict and traced:
        raise LatentMemoryError(
            "strict=True checks capacity on the host and cannot run inside jit/vmap/scan; "
            "inside traced code read the counters (mem.evicted, mem.dropped) instead"
        )
    if cfg.strict and donate:
        raise LatentMemoryError(
            "strict=True keeps the input memory on overflow; it cannot be combined with donate=True"
        )
    latents, depths, intrinsics, cam2world = (jnp.asarray(x) for x in (latents, depths, intrinsics, cam2world))
    exclude = None if exclude is None else jnp.asarray(exclude)
    if not frames_axis:
        latents = latents[None]
        depths = depths[None]
        cam2world = cam2world[None]
        exclude = None if exclude is None else exclude[None]
    fn = _write_jit_donated if donate else _write_jit
    # Only the options that change the program are static: ``strict`` is a host-side check and
    # ``voxel_size`` a traced scalar, and the memory's stored config (static pytree metadata)
    # is detached, so memories that differ only in those share one compilation.
    kernel_cfg = dataclasses.replace(cfg, strict=False, voxel_size=DEFAULT_CONFIG.voxel_size)
    voxel_size = jnp.asarray(cfg.voxel_size, jnp.float32)
    new = fn(without_config(mem), latents, depths, intrinsics, cam2world, exclude, voxel_size, cfg=kernel_cfg)
    new = new.replace(config=mem.config)
    if cfg.strict:
        ev = int(new.evicted) - int(mem.evicted)
        dr = int(new.dropped) - int(mem.dropped)
        if ev or dr:
            raise MemoryOverflowError(
                f"strict write would evict {ev} entr{'y' if ev == 1 else 'ies'} and drop {dr} point(s) "
                f"(capacity {mem.capacity}, {int(mem.count)} held, {int(new.written) - int(mem.written)} "
                f"valid cells in this write); the input memory is unchanged"
            )
    return new
