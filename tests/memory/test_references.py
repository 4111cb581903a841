"""Frustum visibility, exact voxel sets / IoU, and reference-frame retrieval (spec section 2)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memtest_lib as lib
from mirage_jax import memory as M

K = lib.K_image()
I4 = np.eye(4, dtype=np.float32)
N = 96


def _memory_with(points, valid=None):
    points = np.asarray(points, np.float32)
    n = len(points)
    mem = M.empty(N, lib.C)
    valid = np.ones(n, bool) if valid is None else valid
    return mem.replace(
        points=mem.points.at[:n].set(points),
        valid=mem.valid.at[:n].set(valid),
        count=jnp.int32(int(valid.sum())),
    )


def _np_voxels(points, mask, vs):
    keys = np.floor(points[mask] / np.float32(vs)).astype(np.int64)
    return {tuple(k) for k in keys}


def _np_iou(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


@given(seed=st.integers(0, 2**31 - 1), vs=st.sampled_from([0.1, 0.37, 1.0]))
def test_voxel_sets_and_iou_are_exact(seed, vs):
    rng = np.random.default_rng(seed)
    # Integer-ish coordinates put many points in shared voxels and on voxel boundaries.
    jitter = rng.uniform(0, 0.05, (N, 3)) * rng.integers(0, 2, (N, 1))
    pts = (rng.integers(-6, 6, (N, 3)) * 0.05 + jitter).astype(np.float32)
    valid = rng.uniform(size=N) < 0.9
    mem = _memory_with(pts, valid)
    masks = rng.uniform(size=(4, N)) < 0.5
    sets = M.frame_voxel_sets(mem, jnp.asarray(masks), vs)
    for f in range(4):
        expect = _np_voxels(pts, masks[f] & valid, vs)
        n = int(sets.count[f])
        got = np.asarray(sets.keys[f])
        assert n == len(expect) and {tuple(k) for k in got[:n]} == expect
        assert (np.diff(got[:n].astype(np.int64) @ np.array([2**42, 2**21, 1])) > 0).all() or n < 2  # sorted
    target = rng.uniform(size=N) < 0.5
    t_set = _np_voxels(pts, target & valid, vs)
    want = [_np_iou(_np_voxels(pts, masks[f] & valid, vs), t_set) for f in range(4)]
    by_masks = np.asarray(M.voxel_iou(mem, jnp.asarray(masks), jnp.asarray(target), vs))
    tset = M.voxel_set(mem.points, jnp.asarray(target) & mem.valid, vs)
    by_sets = np.asarray(M.voxel_set_iou(sets, tset))
    np.testing.assert_allclose(by_masks, want, rtol=1e-6)
    np.testing.assert_allclose(by_sets, want, rtol=1e-6)


def test_retrieve_references_ranking_threshold_and_ties():
    # Voxel-aligned points: 10 distinct voxels (size 0.1) along x.
    pts = np.array([[0.1 * i + 0.05, 0.05, 0.05] for i in range(10)], np.float32)
    mem = _memory_with(pts)
    target = np.zeros(N, bool)
    target[:4] = True  # voxels 0..3

    def vis(idx):
        m = np.zeros(N, bool)
        m[list(idx)] = True
        return m

    frames = np.stack(
        [
            vis([0, 1]),  # IoU 2/4 = 0.5
            vis([5, 6, 7, 8, 9]),  # 0
            vis([0, 1, 2, 3]),  # 1.0
            vis([2, 3]),  # 0.5 (ties frame 0: the more recent frame 3 comes first)
            vis([3, 4, 5, 6, 7, 8, 9]),  # 1/10 = 0.1
            vis([]),  # 0
        ]
    )
    ref = M.retrieve_references(mem, jnp.asarray(frames), jnp.asarray(target), k=4, threshold=0.04)
    np.testing.assert_array_equal(np.asarray(ref.indices), [2, 3, 0, 4])
    np.testing.assert_allclose(np.asarray(ref.iou), [1.0, 0.5, 0.5, 0.1], rtol=1e-6)
    assert np.asarray(ref.found).all()
    # Threshold is strict; fewer than k results are padded with -1.
    ref = M.retrieve_references(mem, jnp.asarray(frames), jnp.asarray(target), k=4, threshold=0.1)
    np.testing.assert_array_equal(np.asarray(ref.indices), [2, 3, 0, -1])
    np.testing.assert_array_equal(np.asarray(ref.found), [True, True, True, False])
    # Padding frames are never returned; k larger than F works.
    valid_frames = np.array([True, True, False, True, True, True])
    ref = M.retrieve_references(
        mem, jnp.asarray(frames), jnp.asarray(target), k=8, frame_valid=jnp.asarray(valid_frames)
    )
    np.testing.assert_array_equal(np.asarray(ref.indices), [3, 0, 4, -1, -1, -1, -1, -1])
    # The voxel-set form gives the same answer; several target cameras are united.
    sets = M.frame_voxel_sets(mem, jnp.asarray(frames), 0.1)
    two_targets = jnp.asarray(np.stack([vis([0, 1]), vis([2, 3])]))
    for tv in (jnp.asarray(target), two_targets):
        ref2 = M.retrieve_references(mem, sets, tv, k=4)
        np.testing.assert_array_equal(np.asarray(ref2.indices), [2, 3, 0, 4])
    ref3 = M.retrieve_references(mem, sets, M.voxel_set(mem.points, jnp.asarray(target), 0.1), k=4)
    np.testing.assert_array_equal(np.asarray(ref3.indices), [2, 3, 0, 4])
    with pytest.raises(M.LatentMemoryError, match=r"frame_visible: expected bool\[F, 96\]"):
        M.retrieve_references(mem, jnp.asarray(target), jnp.asarray(target))
    with pytest.raises(M.LatentMemoryError, match="target_visible: expected dtype bool"):
        M.retrieve_references(mem, jnp.asarray(frames), jnp.asarray(target, jnp.float32))
    with pytest.raises(M.LatentMemoryError, match="k must be a positive int"):
        M.retrieve_references(mem, jnp.asarray(frames), jnp.asarray(target), k=0)


def test_frustum_visible_matches_projection_and_ignores_occlusion():
    rng = np.random.default_rng(0)
    lat, depth = lib.random_frame(rng, hole_fraction=0.0, depth_range=(2.0, 2.0))
    mem = M.write(M.empty(N, lib.C), lat, depth, K, I4)
    behind = M.write(mem, lat, depth * 2, K, I4)  # a second, fully occluded layer
    vis = np.asarray(M.frustum_visible(behind, K, I4, lib.IMAGE_HW, lib.LATENT_HW))
    assert vis.sum() == 2 * lib.h * lib.w  # occluded points are in the frustum too
    # near / far select depth ranges; a camera turned around sees nothing.
    near_only = np.asarray(M.frustum_visible(behind, K, I4, lib.IMAGE_HW, lib.LATENT_HW, far=3.0))
    assert near_only.sum() == lib.h * lib.w
    assert not np.asarray(M.frustum_visible(behind, K, lib.pose((0.0, np.pi, 0.0)), lib.IMAGE_HW)).any()
    # Batched cameras == one at a time; points shifted out of the image are not visible.
    poses = np.stack([I4, lib.pose(t=(1.0, 0.0, 0.0)), lib.pose(t=(0.0, 0.0, -1.0))])
    batch = np.asarray(M.frustum_visible(behind, K, poses, lib.IMAGE_HW))
    for i, p in enumerate(poses):
        np.testing.assert_array_equal(batch[i], np.asarray(M.frustum_visible(behind, K, p, lib.IMAGE_HW)))
    assert batch[1].sum() < batch[0].sum()
    # Exactly the points a read at the same grid considers (before the z-buffer).
    pts = np.asarray(behind.points)
    X = pts - poses[1][:3, 3]
    z = np.where(X[:, 2] > 0, X[:, 2], 1.0)
    u = np.round(K[0, 0] * X[:, 0] / z + K[0, 2])
    v = np.round(K[1, 1] * X[:, 1] / z + K[1, 2])
    inside = np.asarray(behind.valid) & (X[:, 2] > 0) & (u >= 0) & (u < lib.W) & (v >= 0) & (v < lib.H)
    np.testing.assert_array_equal(batch[1], inside)
