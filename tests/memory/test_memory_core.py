"""The latent memory's write/read semantics (spec section 2), capacity policies, counters,
transformations (jit / vmap / scan / grad), retracing and input validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memtest_lib as lib
from mirage_jax import memory as M
from mirage_jax.geometry.cameras import CONVENTIONS, CameraError
from mirage_jax.memory import core, projection

K = lib.K_image()
I4 = np.eye(4, dtype=np.float32)
seeds = st.integers(0, 2**31 - 1)


def fresh(cap=lib.CAP, **options):
    return M.empty(cap, lib.C, **options)


def read(mem, c2w, Kr=K, **kw):
    return M.read(mem, Kr, c2w, lib.IMAGE_HW, lib.LATENT_HW, **kw)


def tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def random_K(rng):
    f = rng.uniform(4.0, 30.0)
    return lib.K_image(fx=f, fy=f * rng.uniform(0.8, 1.25), cx=rng.uniform(2, lib.W - 2), cy=rng.uniform(2, lib.H - 2))


def grid_depth(depth, mode="bilinear"):
    return np.asarray(projection.resize_depth(depth, lib.LATENT_HW, mode))


def invariants(mem):
    c = M.counters(mem)
    assert c["written"] == c["inserted"] + c["fused"] + c["dropped"]
    assert c["count"] == int(np.asarray(mem.valid).sum()) == c["inserted"] - c["evicted"]
    assert 0 <= c["count"] <= mem.capacity
    return c


# --------------------------------------------------------------------------------------------
# Reference semantics.
# --------------------------------------------------------------------------------------------


# Both conventions and both depth resizes (paired to keep the number of compilations down).
@given(seed=seeds, options=st.sampled_from([("reference", "bilinear"), ("centred", "edge_safe")]))
def test_written_frame_reads_back_exactly_at_its_camera(seed, options):
    convention, resize = options
    rng = np.random.default_rng(seed)
    lat, depth = lib.random_frame(rng, hole_fraction=rng.uniform(0, 0.5))
    Kr, c2w = random_K(rng), lib.random_pose(rng)
    mem = M.write(fresh(convention=convention, depth_resize=resize), lat, depth, Kr, c2w)
    out = read(mem, c2w, Kr)
    d = grid_depth(depth, resize)
    valid = d > 0
    np.testing.assert_array_equal(np.asarray(out.hit), valid)
    np.testing.assert_array_equal(np.asarray(out.features)[valid], lat[valid])  # exact copies
    assert not np.asarray(out.features)[~valid].any()
    np.testing.assert_allclose(np.asarray(out.depth), np.where(valid, d, 0), rtol=2e-5, atol=1e-6)
    invariants(mem)


@given(seed=seeds, convention=st.sampled_from(CONVENTIONS))
def test_agrees_with_plain_numpy_implementation_of_the_spec(seed, convention):
    """3 overlapping frames into a 30-slot ring (evictions), read at a 4th camera."""
    rng = np.random.default_rng(seed)
    cap = 30
    mem = fresh(cap, convention=convention)
    all_pts, all_feats = [], []
    for _ in range(3):
        lat, depth = lib.random_frame(rng, hole_fraction=0.3, depth_range=(2.0, 6.0))
        exclude = rng.uniform(size=depth.shape) < 0.1
        c2w = lib.random_pose(rng, max_angle=0.25, max_t=0.5)
        mem = M.write(mem, lat, depth, K, c2w, exclude=exclude)
        for p, f in lib.np_write(lat, depth, K, c2w, exclude, convention):
            all_pts.append(p)
            all_feats.append(f)
    kept_pts, kept_feats = all_pts[-cap:], all_feats[-cap:]  # a ring keeps the last `cap` points
    # The stored points, oldest to newest (ring order from the cursor), match the spec's.
    cursor = int(mem.cursor)
    order = [(cursor + i) % cap for i in range(cap)]
    valid = np.asarray(mem.valid)
    order = [s for s in order if valid[s]]
    assert len(order) == len(kept_pts)
    np.testing.assert_allclose(np.asarray(mem.points)[order], np.array(kept_pts), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mem.features)[order], np.array(kept_feats))
    # Readout at a new camera: identical on every cell that float32 rounding cannot flip.
    c2w_t = lib.random_pose(rng, max_angle=0.25, max_t=0.5)
    out = read(mem, c2w_t)
    f_ref, hit_ref, d_ref, amb = lib.np_read(kept_pts, kept_feats, K, c2w_t, lib.IMAGE_HW, lib.LATENT_HW, convention)
    ok = ~amb
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(np.asarray(out.hit)[ok], hit_ref[ok])
    np.testing.assert_array_equal(np.asarray(out.features)[ok], f_ref[ok])
    np.testing.assert_allclose(np.asarray(out.depth)[ok], d_ref[ok], rtol=1e-5, atol=1e-6)
    invariants(mem)


@given(near=st.floats(0.5, 3.0), gap=st.floats(0.01, 5.0), near_first=st.booleans(), shift=st.floats(-0.3, 0.3))
def test_nearest_point_wins_under_occlusion(near, gap, near_first, shift):
    rng = np.random.default_rng(0)
    lat_near, _ = lib.random_frame(rng)
    lat_far, _ = lib.random_frame(rng)
    d_near = np.full((lib.H, lib.W), near, np.float32)
    d_far = np.full((lib.H, lib.W), near + gap, np.float32)
    order = [(lat_near, d_near), (lat_far, d_far)]
    if not near_first:
        order = order[::-1]
    mem = fresh()
    for lat, d in order:
        mem = M.write(mem, lat, d, K, I4)
    out = read(mem, I4)
    np.testing.assert_array_equal(np.asarray(out.features), lat_near)
    np.testing.assert_allclose(np.asarray(out.depth), near, rtol=1e-6)
    # From a sideways-shifted camera, every cell that a near point reaches shows the same near
    # point as a memory holding the near plane alone (farther points never win there).
    c2w = lib.pose(t=(shift, 0.0, 0.0))
    out = read(mem, c2w)
    alone = read(M.write(fresh(), lat_near, d_near, K, I4), c2w)
    covered = np.asarray(alone.hit)
    assert covered.sum() >= 12
    np.testing.assert_array_equal(np.asarray(out.features)[covered], np.asarray(alone.features)[covered])
    np.testing.assert_allclose(np.asarray(out.depth)[covered], near, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.depth)[~covered & np.asarray(out.hit)], near + gap, rtol=1e-5)


def test_exact_depth_tie_goes_to_most_recent_write():
    rng = np.random.default_rng(3)
    _, depth = lib.random_frame(rng, hole_fraction=0.0)
    lats = [lib.random_frame(rng)[0] for _ in range(3)]
    mem = fresh()
    for lat in lats[:2]:  # the same view twice: bit-identical points, exact ties everywhere
        mem = M.write(mem, lat, depth, K, I4)
        np.testing.assert_array_equal(np.asarray(read(mem, I4).features), lat)
    # Also after the ring wrapped (slot order no longer equals age).
    mem = fresh(30)
    for lat in lats:
        mem = M.write(mem, lat, depth, K, I4)
    assert int(mem.evicted) > 0
    np.testing.assert_array_equal(np.asarray(read(mem, I4).features), lats[-1])


def test_points_behind_camera_or_outside_frustum_are_ignored():
    mem = fresh()
    pts = np.array(
        [
            [0.0, 0.0, 2.0],  # in front, centre: hit
            [0.0, 0.0, -2.0],  # behind: would project to the centre without the Z > 0 test
            [100.0, 0.0, 1.0],  # far right, outside the grid
            [0.0, -100.0, 1.0],  # above, outside
            [0.3, 0.0, 2.0],  # in front but marked invalid
            [0.0, 0.0, 0.0],  # Z = 0
        ],
        np.float32,
    )
    n = len(pts)
    mem = mem.replace(
        points=mem.points.at[:n].set(pts),
        features=mem.features.at[:n].set(np.arange(1, n + 1, dtype=np.float32)[:, None] * np.ones(lib.C)),
        valid=mem.valid.at[:n].set(np.array([1, 1, 1, 1, 0, 1], bool)),
        count=jnp.int32(5),
    )
    out = read(mem, I4)
    hit = np.asarray(out.hit)
    assert hit.sum() == 1
    assert np.asarray(out.features)[hit][0, 0] == 1.0
    # A frame written forward is invisible to the camera turned around.
    rng = np.random.default_rng(0)
    lat, depth = lib.random_frame(rng)
    mem = M.write(fresh(), lat, depth, K, I4)
    back = lib.pose(axis_angle=(0.0, math.pi, 0.0))
    assert not np.asarray(read(mem, back).hit).any()
    # Every readout is 0 where nothing landed.
    out = read(mem, lib.pose(t=(0.5, 0.0, 0.0)))
    assert not np.asarray(out.features)[~np.asarray(out.hit)].any()
    assert not np.asarray(out.depth)[~np.asarray(out.hit)].any()


# --------------------------------------------------------------------------------------------
# Determinism, transformations, retracing, gradients.
# --------------------------------------------------------------------------------------------


def test_identical_under_repeat_jit_vmap_and_scan():
    rng = np.random.default_rng(5)
    frames = [lib.random_frame(rng) for _ in range(3)]
    poses = np.stack([lib.random_pose(rng, 0.3, 0.5) for _ in range(3)])
    mem0 = fresh(30)

    def seq(mem):
        for (lat, d), p in zip(frames, poses):
            mem = M.write(mem, lat, d, K, p)
        return mem

    a, b = seq(mem0), seq(mem0)
    assert tree_equal(a, b)
    jitted = jax.jit(lambda m, lat, d, p: M.write(m, lat, d, K, p))
    c = mem0
    for (lat, d), p in zip(frames, poses):
        c = jitted(c, lat, d, p)
    assert tree_equal(a, c)
    # write_frames == sequential writes (ring), and so does a lax.scan over frames.
    lats = np.stack([f[0] for f in frames])
    deps = np.stack([f[1] for f in frames])
    wf = M.write_frames(mem0, lats, deps, K, poses)
    arrays = ("points", "features", "valid", "step", "weight", "cursor", "count", "frames", "written", "fused")
    assert all(np.array_equal(getattr(a, k), getattr(wf, k)) for k in arrays)
    # Cells that sequential writes insert and overwrite within the chunk count as dropped.
    within = int(a.evicted) - int(wf.evicted)
    assert within == int(wf.dropped) == int(a.inserted) - int(wf.inserted) and int(a.dropped) == 0
    assert within > 0  # the chunk overflowed the 30 slots: the case above was exercised
    scanned, _ = jax.lax.scan(lambda m, x: (M.write(m, x[0], x[1], K, x[2]), None), mem0, (lats, deps, poses))
    assert tree_equal(a, scanned)
    # vmap over a batch of memories (each with its own frame) == one at a time.
    singles = [M.write(mem0, lat, d, K, p) for (lat, d), p in zip(frames, poses)]
    batched = jax.vmap(lambda m, lat, d, p: M.write(m, lat, d, K, p))(stack([mem0] * 3), lats, deps, poses)
    assert tree_equal(stack(singles), batched)
    target = lib.pose(t=(0.1, 0.0, 0.0))
    reads = jax.vmap(lambda m: M.read(m, K, target, lib.IMAGE_HW, lib.LATENT_HW))(batched)
    assert tree_equal(stack([read(m, target) for m in singles]), reads)
    # The same stacked batch passed without vmap is refused clearly (it used to broadcast the
    # per-memory scalars against the slots: an obscure error, or garbage when sizes line up).
    for call in (
        lambda: M.read(batched, K, target, lib.IMAGE_HW, lib.LATENT_HW),
        lambda: M.write(batched, lats[0], deps[0], K, poses[0]),
        lambda: M.frustum_visible(batched, K, target, lib.IMAGE_HW),
    ):
        with pytest.raises(M.LatentMemoryError, match="single memory.*jax.vmap"):
            call()
    # read_many == per-camera reads, with and without camera chunking; repeated runs agree.
    many = M.read_many(a, K, poses, lib.IMAGE_HW, lib.LATENT_HW)
    assert tree_equal(stack([read(a, p) for p in poses]), many)
    assert tree_equal(many, M.read_many(a, np.stack([K] * 3), poses, lib.IMAGE_HW, lib.LATENT_HW, camera_chunk=2))
    assert tree_equal(many, M.read_many(a, K, poses, lib.IMAGE_HW, lib.LATENT_HW))
    # Donation updates in place and gives the same result.
    donor = jax.tree.map(jnp.copy, a)
    lat, d = frames[0]
    out = M.write(donor, lat, d, K, poses[0], donate=True)
    assert tree_equal(out, M.write(a, lat, d, K, poses[0]))
    assert donor.features.is_deleted()


def test_no_retrace_for_same_shapes_and_options():
    rng = np.random.default_rng(0)
    lat, depth = lib.random_frame(rng)
    mem = fresh(47)  # a capacity no other test uses: the first call below traces
    before = core.TRACE_COUNTS["write"]
    mem = M.write(mem, lat, depth, K, I4)
    assert core.TRACE_COUNTS["write"] == before + 1
    read(mem, I4)
    M.read_many(mem, K, np.stack([I4, I4]), lib.IMAGE_HW, lib.LATENT_HW)
    before = dict(core.TRACE_COUNTS)
    for i in range(3):
        lat, depth = lib.random_frame(rng)
        mem = M.write(mem, lat, depth, K, lib.pose(t=(0.1 * i, 0, 0)))
        assert dict(core.TRACE_COUNTS) == before
        read(mem, lib.pose(t=(0.0, 0.1 * i, 0)))
        M.read_many(mem, K, np.stack([I4, lib.pose(t=(0.1 * i, 0, 0))]), lib.IMAGE_HW, lib.LATENT_HW)
    # Same options passed explicitly (equal to the defaults) and a strict write: no new trace.
    mem = M.write(mem, lat, depth, K, I4, convention="reference", policy="ring")
    M.write(fresh(47), lat, depth, K, I4, strict=True)
    assert dict(core.TRACE_COUNTS) == before
    # voxel_size is traced, not static: changing it does not recompile a fusing write.
    fm = fresh(47, policy="fuse", voxel_size=0.1)
    fm = M.write(fm, lat, depth, K, I4)
    before = dict(core.TRACE_COUNTS)
    for vs in (0.2, 0.3):
        M.write(fm, lat, depth, K, I4, voxel_size=vs)
    M.write(fresh(47, policy="fuse", voxel_size=0.4), lat, depth, K, I4)
    assert dict(core.TRACE_COUNTS) == before


def test_gradient_of_readout_wrt_features():
    rng = np.random.default_rng(1)
    mem = fresh()
    for i in range(2):
        lat, depth = lib.random_frame(rng, hole_fraction=0.3)
        mem = M.write(mem, lat, depth, K, lib.pose(t=(0.2 * i, 0, 0)))
    c2w = lib.pose(t=(0.1, 0.05, 0.0))
    weights = rng.normal(size=(lib.h, lib.w, lib.C)).astype(np.float32)

    def loss(features):
        out = read(mem.replace(features=features), c2w)
        return jnp.sum(out.features * weights) + 0.5 * jnp.sum(out.features**2)

    grad = np.asarray(jax.grad(loss)(mem.features))
    # Which slot won each cell: read a memory whose features are the slot ids.
    ids = jnp.broadcast_to(jnp.arange(mem.capacity, dtype=jnp.float32)[:, None], mem.features.shape)
    probe = read(mem.replace(features=ids), c2w)
    hit = np.asarray(probe.hit)
    winners = np.asarray(probe.features)[..., 0].astype(int)
    feats = np.asarray(mem.features)
    expected = np.zeros_like(feats)
    for v, u in zip(*np.nonzero(hit)):
        s = winners[v, u]
        expected[s] += weights[v, u] + feats[s]
    assert hit.sum() > 5
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Capacity: ring eviction, drops, strict mode, voxel fusion.
# --------------------------------------------------------------------------------------------


def test_ring_evicts_oldest_first():
    rng = np.random.default_rng(2)
    cap = 30
    lats = [lib.random_frame(rng)[0] for _ in range(3)]
    depth = np.full((lib.H, lib.W), 2.0, np.float32)  # 24 valid cells per frame
    mem = fresh(cap)
    mem = M.write(mem, lats[0], depth, K, I4)
    c = invariants(mem)
    assert (c["count"], c["cursor"], c["evicted"]) == (24, 24, 0)
    mem = M.write(mem, lats[1], depth, K, lib.pose(t=(0, 0, 1.0)))
    c = invariants(mem)
    assert (c["count"], c["cursor"], c["evicted"], c["dropped"]) == (30, 18, 18, 0)
    step = np.asarray(mem.step)
    feats = np.asarray(mem.features)
    # Frame 0 keeps exactly its 6 most recently written cells (the last 6 in row-major order).
    survivors = np.nonzero(step == 0)[0]
    np.testing.assert_array_equal(survivors, np.arange(18, 24))
    np.testing.assert_array_equal(feats[survivors], lats[0].reshape(-1, lib.C)[18:])
    np.testing.assert_array_equal(feats[np.r_[24:30, 0:18]], lats[1].reshape(-1, lib.C))
    mem = M.write(mem, lats[2], depth, K, lib.pose(t=(0, 0, 2.0)))
    c = invariants(mem)
    assert c["evicted"] == 18 + 24 and not (np.asarray(mem.step) == 0).any()
    assert sorted(set(np.asarray(mem.step).tolist())) == [1, 2]


def test_overflow_within_one_write_drops_earliest_and_strict_raises():
    rng = np.random.default_rng(4)
    lat, _ = lib.random_frame(rng)
    depth = np.full((lib.H, lib.W), 2.0, np.float32)
    mem = M.write(fresh(10), lat, depth, K, I4)
    c = invariants(mem)
    assert (c["count"], c["dropped"], c["written"], c["inserted"]) == (10, 14, 24, 10)
    np.testing.assert_array_equal(
        np.sort(np.asarray(mem.features), axis=0), np.sort(lat.reshape(-1, lib.C)[14:], axis=0)
    )
    small = fresh(10)
    with pytest.raises(M.MemoryOverflowError, match="drop 14"):
        M.write(small, lat, depth, K, I4, strict=True)
    assert int(small.count) == 0  # the caller's memory is untouched
    half = M.write(fresh(30), lat, depth, K, I4, strict=True)
    with pytest.raises(M.MemoryOverflowError, match="evict 18"):
        M.write(half, lat, depth, K, I4, strict=True)
    strict_mem = fresh(30, strict=True)  # strict as a stored option
    strict_mem = M.write(strict_mem, lat, depth, K, I4)
    with pytest.raises(M.MemoryOverflowError):
        M.write(strict_mem, lat, depth, K, I4)
    with pytest.raises(M.LatentMemoryError, match="cannot run inside jit"):
        jax.jit(lambda m: M.write(m, lat, depth, K, I4, strict=True))(fresh(30))
    with pytest.raises(M.LatentMemoryError, match="donate"):
        M.write(fresh(30), lat, depth, K, I4, strict=True, donate=True)


@given(seed=seeds, mode=st.sampled_from(M.FUSE_MODES), voxel=st.sampled_from([1e-3, 0.2, 0.7]))
def test_fusion_keeps_count_flat_on_revisits(seed, mode, voxel):
    rng = np.random.default_rng(seed)
    _, depth = lib.random_frame(rng, hole_fraction=0.2)
    c2w = lib.random_pose(rng, 0.5, 2.0)
    mem = fresh(lib.CAP, policy="fuse", voxel_size=voxel, fuse_mode=mode)
    lats = []
    for i in range(4):
        lat = rng.normal(size=(lib.h, lib.w, lib.C)).astype(np.float32)
        lats.append(lat)
        mem = M.write(mem, lat, depth, K, c2w)
        c = invariants(mem)
        if i == 0:
            n0 = c["count"]
            # One entry per distinct voxel of the frame's points (exact integer keys).
            pts = np.asarray(mem.points)[np.asarray(mem.valid)]
            keys = np.floor(pts / np.float32(voxel)).astype(np.int64)
            assert n0 == len(np.unique(keys, axis=0))
        assert c["count"] == n0 and c["evicted"] == 0 and c["dropped"] == 0
    valid = np.asarray(mem.valid)
    keys = np.floor(np.asarray(mem.points)[valid] / np.float32(voxel)).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == valid.sum()  # never two entries in one voxel
    if voxel == 1e-3:  # every cell its own voxel: fused features are exact per-cell statistics
        d = grid_depth(depth) > 0
        out = read(mem, c2w)
        np.testing.assert_array_equal(np.asarray(out.hit), d)
        want = np.mean(lats, axis=0) if mode == "average" else lats[-1]
        got = np.asarray(out.features)
        if mode == "average":
            np.testing.assert_allclose(got[d], want[d], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[d], want[d])
        np.testing.assert_array_equal(np.asarray(mem.weight)[valid], 4.0 if mode == "average" else 1.0)


def test_fusion_with_ring_eviction_and_write_frames():
    rng = np.random.default_rng(9)
    frames = [lib.random_frame(rng, hole_fraction=0.0) for _ in range(3)]
    poses = np.stack([lib.pose(t=(2.0 * i, 0, 0)) for i in range(3)])  # three disjoint places
    cap = lib.CAP
    mem = fresh(cap, policy="fuse", voxel_size=0.05)
    inserted = []
    for (lat, d), p in zip(frames, poses):
        before = int(mem.inserted)
        mem = M.write(mem, lat, d, K, p)
        inserted.append(int(mem.inserted) - before)
        invariants(mem)
    c = M.counters(mem)
    assert c["evicted"] == sum(inserted) - cap > 0 and c["count"] == cap
    # The evicted entries are the least recently updated ones: all from the first place.
    steps = np.asarray(mem.step)[np.asarray(mem.valid)]
    assert [(steps == i).sum() for i in range(3)] == [inserted[0] - c["evicted"], inserted[1], inserted[2]]
    # Revisiting the newest place fuses instead of evicting.
    lat2 = rng.normal(size=(lib.h, lib.w, lib.C)).astype(np.float32)
    mem2 = M.write(mem, lat2, frames[2][1], K, poses[2])
    c2 = invariants(mem2)
    assert c2["evicted"] == c["evicted"] and c2["count"] == c["count"]
    # write_frames fuses a chunk like sequential writes: the same voxels and (averaged) features.
    lats = np.stack([lat2, lat2 * 2, lat2 * 3])
    deps = np.stack([frames[0][1]] * 3)
    a = M.write_frames(fresh(cap, policy="fuse", voxel_size=0.05), lats, deps, K, np.stack([I4] * 3))
    b = fresh(cap, policy="fuse", voxel_size=0.05)
    for i in range(3):
        b = M.write(b, lats[i], deps[i], K, I4)
    invariants(a)
    for m in (a, b):
        out = read(m, I4)
        want = np.where(np.asarray(out.hit)[..., None], lat2 * 2, 0)  # the mean of 1x, 2x, 3x
        np.testing.assert_allclose(np.asarray(out.features), want, rtol=1e-5, atol=1e-6)
    assert int(a.count) == int(b.count)
    ra = fresh(cap, policy="fuse", voxel_size=0.05, fuse_mode="replace")
    ra = M.write_frames(ra, lats, deps, K, np.stack([I4] * 3))
    out = read(ra, I4)
    np.testing.assert_array_equal(np.asarray(out.features), np.where(np.asarray(out.hit)[..., None], lat2 * 3, 0))
    np.testing.assert_array_equal(np.asarray(ra.step)[np.asarray(ra.valid)], 2)


@given(seed=seeds, policy=st.sampled_from(M.POLICIES))
def test_counters_stay_consistent_over_random_writes(seed, policy):
    rng = np.random.default_rng(seed)
    mem = fresh(30, policy=policy, voxel_size=0.3)
    for _ in range(3):
        lat, depth = lib.random_frame(rng, hole_fraction=rng.uniform(0, 0.6))
        mem = M.write(mem, lat, depth, K, lib.random_pose(rng, 0.4, 1.0))
        invariants(mem)
    assert M.counters(mem)["frames"] == 3


def test_non_finite_depth_inside_jit_is_invalid_not_nan():
    rng = np.random.default_rng(0)
    lat, depth = lib.random_frame(rng, hole_fraction=0.0)
    depth[0, 0] = np.nan
    depth[5, 7] = np.inf
    mem = jax.jit(lambda m, d: M.write(m, lat, d, K, I4))(fresh(), depth)
    assert np.isfinite(np.asarray(mem.points)).all()
    assert int(mem.rejected) == 2 and int(mem.count) == lib.h * lib.w - 2
    invariants(mem)


def test_memory_size_and_dtypes():
    mem = M.empty(10, 48, jnp.bfloat16)
    assert mem.capacity == 10 and mem.channels == 48 and mem.dtype == jnp.bfloat16
    assert mem.nbytes == 10 * (12 + 96 + 1 + 4 + 4) + 9 * 4
    rng = np.random.default_rng(0)
    lat, depth = lib.random_frame(rng)
    out = read(M.write(M.empty(lib.CAP, lib.C, jnp.bfloat16), lat, depth, K, I4), I4)
    assert out.features.dtype == jnp.bfloat16
    valid = grid_depth(depth) > 0
    np.testing.assert_array_equal(np.asarray(out.features)[valid], lat.astype(jnp.bfloat16)[valid])


# --------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------

_LAT, _DEP = lib.random_frame(np.random.default_rng(0))


def _nan_depth():
    d = _DEP.copy()
    d[1, 2] = np.nan
    return d


def _inf_latent():
    x = _LAT.copy()
    x[0, 0, 0] = np.inf
    return x


def _scaled_pose():
    p = I4.copy()
    p[:3, :3] *= 1.5
    return p


_BAD_WRITES = [
    (dict(latent=_LAT[0]), M.LatentMemoryError, r"latent: expected shape \[h, w, C\]"),
    (dict(depth=_DEP[None]), M.LatentMemoryError, r"depth: expected shape \[H, W\]"),
    (dict(latent=np.zeros((lib.h, lib.w, 5), np.float32)), M.LatentMemoryError, "5 channels but the memory holds 3"),
    (dict(depth=np.ones((9, 12), np.float32)), M.LatentMemoryError, "not an integer multiple"),
    (dict(latent=_LAT.astype(np.int32)), M.LatentMemoryError, "latent: expected a float dtype"),
    (dict(depth=_DEP.astype(np.int32)), M.LatentMemoryError, "depth: expected a float dtype"),
    (dict(depth=_nan_depth()), M.LatentMemoryError, r"depth: 1 non-finite value\(s\) \(first at index \(1, 2\)"),
    (dict(latent=_inf_latent()), M.LatentMemoryError, "latent: 1 non-finite"),
    (dict(exclude=np.zeros((lib.H, lib.W), np.float32)), M.LatentMemoryError, "exclude: expected dtype bool"),
    (dict(exclude=np.zeros((lib.h, lib.w), bool)), M.LatentMemoryError, "exclude: expected shape"),
    (dict(K=K[:2]), CameraError, r"intrinsics: expected shape \[3, 3\]"),
    (dict(K=np.diag([0.0, 1.0, 1.0]).astype(np.float32)), CameraError, "intrinsics: focal lengths must be positive"),
    (dict(K=K * np.nan), CameraError, "intrinsics: contains non-finite"),
    (dict(c2w=I4[:3]), CameraError, r"cam2world: expected shape \[4, 4\]"),
    (dict(c2w=_scaled_pose()), CameraError, "cam2world: rotation is not orthonormal"),
    (dict(c2w=np.diag([1.0, -1.0, 1.0, 1.0]).astype(np.float32)), CameraError, "reflection"),
    (dict(c2w=I4.astype(np.int32)), CameraError, "cam2world: expected a float dtype"),
    (dict(options=dict(polcy="ring")), M.LatentMemoryError, r"unknown memory option\(s\) \['polcy'\]"),
    (dict(options=dict(policy="lru")), M.LatentMemoryError, "policy must be one of"),
    (dict(options=dict(convention="centered")), M.LatentMemoryError, "convention must be one of"),
    (dict(options=dict(depth_resize="area")), M.LatentMemoryError, "depth_resize must be one of"),
    (dict(options=dict(voxel_size=-1.0)), M.LatentMemoryError, "voxel_size must be finite and > 0"),
    (dict(options=dict(fuse_mode="max")), M.LatentMemoryError, "fuse_mode must be one of"),
    (dict(mem="not a memory"), M.LatentMemoryError, "mem: expected a LatentMemory"),
]


@pytest.mark.parametrize("bad,exc,msg", _BAD_WRITES, ids=[m for _, _, m in _BAD_WRITES])
def test_bad_write_inputs_raise_clear_errors(bad, exc, msg):
    args = dict(mem=fresh(), latent=_LAT, depth=_DEP, K=K, c2w=I4, exclude=None, options={})
    args.update(bad)
    with pytest.raises(exc, match=msg):
        M.write(
            args["mem"], args["latent"], args["depth"], args["K"], args["c2w"], exclude=args["exclude"], **args["options"]
        )


def test_bad_write_frames_empty_and_read_inputs_raise():
    lats = np.stack([_LAT, _LAT])
    with pytest.raises(M.LatentMemoryError, match="depths: 1 frames but latents has 2"):
        M.write_frames(fresh(), lats, _DEP[None], K, np.stack([I4, I4]))
    with pytest.raises(CameraError, match=r"cam2world: expected shape \[2, 4, 4\]"):
        M.write_frames(fresh(), lats, np.stack([_DEP, _DEP]), K, I4)
    with pytest.raises(CameraError, match=r"intrinsics: expected shape \[3, 3\] or \[2, 3, 3\]"):
        M.write_frames(fresh(), lats, np.stack([_DEP, _DEP]), np.stack([K] * 3), np.stack([I4, I4]))
    with pytest.raises(M.LatentMemoryError, match="capacity must be a positive int"):
        M.empty(0, 3)
    with pytest.raises(M.LatentMemoryError, match="channels must be a positive int"):
        M.empty(4, 2.5)
    with pytest.raises(M.LatentMemoryError, match="dtype must be a float or integer"):
        M.empty(4, 3, bool)
    with pytest.raises(M.LatentMemoryError, match="unknown memory option"):
        M.empty(4, 3, capacity_policy="ring")
    mem = fresh()
    with pytest.raises(M.LatentMemoryError, match="latent_hw: expected"):
        M.read(mem, K, I4, lib.IMAGE_HW, (4, 0))
    with pytest.raises(M.LatentMemoryError, match="image_hw: expected"):
        M.read(mem, K, I4, (8.0, 12), lib.LATENT_HW)
    with pytest.raises(M.LatentMemoryError, match="convention must be one of"):
        M.read(mem, K, I4, lib.IMAGE_HW, lib.LATENT_HW, convention="opengl")
    with pytest.raises(CameraError, match="cam2world: rotation is not orthonormal"):
        M.read(mem, K, _scaled_pose(), lib.IMAGE_HW, lib.LATENT_HW)
    with pytest.raises(M.LatentMemoryError, match=r"cam2world: expected shape \[V, 4, 4\]"):
        M.read_many(mem, K, I4, lib.IMAGE_HW, lib.LATENT_HW)
    with pytest.raises(CameraError, match=r"intrinsics: expected shape \[3, 3\] or \[2, 3, 3\]"):
        M.read_many(mem, np.stack([K] * 3), np.stack([I4, I4]), lib.IMAGE_HW, lib.LATENT_HW)
    with pytest.raises(M.LatentMemoryError, match="camera_chunk"):
        M.read_many(mem, K, np.stack([I4, I4]), lib.IMAGE_HW, lib.LATENT_HW, camera_chunk=0)
