"""Procedural worlds: exact depth, poses and masks, checked against independent computations.

Every render here uses the default capacities and atlas shape and 32 x 32 images, so the suite
compiles the renderer only a few times (single view, single view with shadows, a batch of
frames, a vmap over scenes).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirage_jax.data.worlds import (
    CLASSES,
    GROUPS,
    caption,
    intrinsics_from_fov,
    make_clip,
    random_trajectory,
    render,
    render_frames,
    render_pixels,
    sample_scene,
    scene_objects,
    scene_sdf,
    stack_scenes,
)
from mirage_jax.data.worlds.scene import DEFAULT_CAPACITY, Material, SceneBuilder, frame
from mirage_jax.geometry.cameras import CameraError, check_pose, look_at, project_points, unproject_grid

HW = (32, 32)
K = intrinsics_from_fov(HW, 60.0)


def _pose(eye, target):
    return np.asarray(look_at(np.asarray(eye, np.float32), np.asarray(target, np.float32)))


def _rays64(K, c2w, hw):
    """Independent float64 pinhole rays: origin [3], directions [H, W, 3] with camera z = 1."""
    H, W = hw
    K = np.asarray(K, np.float64)
    P = np.asarray(c2w, np.float64)
    v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], -1)
    return P[:3, 3], d_cam @ P[:3, :3].T


def _room(b: SceneBuilder, W=6.0, D=8.0, H=3.0, material=Material("plain", "white")):
    """Floor, ceiling and four walls of a W x D x H room centred on the origin (y-down world)."""
    planes = [
        ((0, 0, 0), frame((0, 1, 0), right=(1, 0, 0)), "floor"),
        ((0, -H, 0), frame((0, -1, 0), right=(1, 0, 0)), "ceiling"),
        ((W / 2, 0, 0), frame((1, 0, 0)), "wall"),
        ((-W / 2, 0, 0), frame((-1, 0, 0)), "wall"),
        ((0, 0, D / 2), frame((0, 0, 1)), "wall"),
        ((0, 0, -D / 2), frame((0, 0, -1)), "wall"),
    ]
    for c, R, cls in planes:
        b.add("planes", c, 0, material, b.new_object(), cls, rotation=R)
    # (point on plane, inward unit normal) for the analytic check
    return [(np.asarray(c, np.float64), -R[:, 2]) for c, R, _ in planes]


def _planes_depth64(origin, dirs, planes):
    """Nearest positive intersection with one-sided planes (hit from their front side)."""
    best = np.full(dirs.shape[:-1], np.inf)
    for c, n in planes:
        denom = dirs @ n
        t = ((c - origin) @ n) / np.where(denom < 0, denom, -1.0)
        best = np.where((denom < 0) & (t > 0), np.minimum(best, t), best)
    return best


# --------------------------------------------------------------------------------------------
# Depth is exact.
# --------------------------------------------------------------------------------------------


def test_known_plane_gives_analytic_z_depth():
    b = SceneBuilder(DEFAULT_CAPACITY, np.random.default_rng(0))
    planes = _room(b)
    scene = b.to_scene("indoor")
    # Head-on: the far wall (z = 4) seen from z = 0 has z-depth 4 at *every* pixel it covers
    # (ray length would grow towards the corners).
    eye = np.array([0.0, -1.5, 0.0])
    c2w = _pose(eye, eye + [0, 0, 1])
    out = render(scene, K, c2w, HW)
    far_wall = np.asarray(out["object_id"]) == 4
    assert far_wall.sum() > 200
    np.testing.assert_allclose(np.asarray(out["depth"])[far_wall], 4.0, rtol=2e-6)
    # An oblique, pitched camera: every pixel against an independent float64 ray-plane solve.
    c2w = _pose([0.7, -1.2, -1.1], [-1.9, -2.3, 2.4])
    out = render(scene, K, c2w, HW)
    o, d = _rays64(K, c2w, HW)
    expect = _planes_depth64(o, d, planes)
    depth = np.asarray(out["depth"], np.float64)
    assert np.all(np.isfinite(expect)) and np.all(depth > 0)
    np.testing.assert_allclose(depth, expect, rtol=1e-5)
    assert not np.asarray(out["sky"]).any()
    # Unprojecting the depth lands every point on the plane that was hit.
    pts = np.asarray(unproject_grid(out["depth"], K, c2w), np.float64)
    ids = np.asarray(out["object_id"])
    for k, (c, n) in enumerate(planes):
        if (ids == k).any():
            assert np.abs((pts[ids == k] - c) @ n).max() < 1e-4


def _reproject(scene, c2w_a, c2w_b, t_a, t_b, shadows):
    """Renders A, unprojects with its depth, re-renders B exactly through the projected points."""
    a = render(scene, K, c2w_a, HW, t=t_a, shadows=shadows)
    pts = unproject_grid(a["depth"], K, c2w_a).reshape(-1, 3)
    uv, z = project_points(pts, K, c2w_b)
    b = render_pixels(scene, K, c2w_b, uv.reshape(HW + (2,)), t=t_b, shadows=shadows)
    uv = np.asarray(uv).reshape(HW + (2,))
    z = np.asarray(z).reshape(HW)
    inside = (uv >= -0.5).all(-1) & (uv[..., 0] <= HW[1] - 0.5) & (uv[..., 1] <= HW[0] - 0.5) & (z > 0)
    static = ~np.asarray(a["dynamic"]) & ~np.asarray(b["dynamic"])
    # a moving object's shadow changes a static surface's colour over time
    static &= ~np.asarray(a["moving_shadow"]) & ~np.asarray(b["moving_shadow"])
    valid = (np.asarray(a["depth"]) > 0) & ~np.asarray(b["sky"]) & inside & static
    depth_b = np.asarray(b["depth"])
    # Visible from B: the point faces B (primitives are convex, so a facing point cannot hide
    # behind its own primitive) and B's ray meets the same surface (instance and normal);
    # otherwise something nearer hides it.
    n_a = np.asarray(a["normal"], np.float64)
    to_b = np.asarray(c2w_b, np.float64)[:3, 3] - np.asarray(pts, np.float64).reshape(HW + (3,))
    facing = (n_a * to_b).sum(-1) > 0.05 * np.linalg.norm(to_b, axis=-1)
    same = np.asarray(a["object_id"]) == np.asarray(b["object_id"])
    same &= (n_a * np.asarray(b["normal"])).sum(-1) > 0.999
    visible = valid & facing & same
    return a, b, z, depth_b, valid, visible


@pytest.mark.parametrize(
    "kind,seed,shadows",
    [("indoor", 3, False), ("indoor", 9, True), ("outdoor", 5, True)],
)
def test_reprojection_with_ground_truth_depth_and_poses_is_exact(kind, seed, shadows):
    scene = sample_scene(seed, kind)
    path = random_trajectory(scene, seed, 9, kind="walk", speed=2.5)
    c2w_a, c2w_b = path[0], path[-1]
    assert np.linalg.norm(c2w_a[:3, 3] - c2w_b[:3, 3]) > 0.3  # a real baseline
    a, b, z, depth_b, valid, visible = _reproject(scene, c2w_a, c2w_b, 0.0, 0.5, shadows)
    assert visible.sum() >= 0.3 * visible.size, visible.sum()
    rel = np.abs(depth_b - z)[visible] / z[visible]
    assert rel.max() < 1e-4, rel.max()
    diff = np.abs(np.asarray(a["rgb"]) - np.asarray(b["rgb"])).max(-1)[visible]
    # Shading is view-independent and textures are continuous: colours agree to float
    # round-off (a point exactly on a texture seam or shadow edge could differ; none does here).
    assert np.median(diff) < 1e-5
    assert np.mean(diff > 2e-3) <= 0.005, np.sort(diff)[-10:]
    # Surfaces are solid: B never sees *past* a surface point (its first hit is never behind it).
    assert np.all(depth_b[valid] <= z[valid] * (1 + 1e-4))


def test_render_pixels_on_the_grid_equals_render():
    scene = sample_scene(1, "indoor")
    c2w = random_trajectory(scene, 1, 1)[0]
    grid = np.stack(np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="xy"), -1)
    a = render(scene, K, c2w, HW)
    b = render_pixels(scene, K, c2w, grid)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_sdf_and_renderer_agree_on_hit_points():
    """The host SDF (an independent implementation of every primitive) confirms each rendered
    hit: the point lies on a surface, and the open segment from the camera to it is free."""
    for kind, seed in (("indoor", 2), ("outdoor", 4)):
        scene = sample_scene(seed, kind)
        c2w = random_trajectory(scene, seed, 1, min_view=0.5)[0]
        out = render(scene, K, c2w, HW, t=0.3)
        hit = np.asarray(out["depth"]) > 0
        pts = np.asarray(unproject_grid(out["depth"], K, c2w), np.float64)[hit]
        depth = np.asarray(out["depth"], np.float64)[hit]
        on_surface = np.abs(scene_sdf(scene, pts, 0.3))
        assert np.all(on_surface < 2e-6 * depth + 1e-5), on_surface.max()
        o = c2w[:3, 3].astype(np.float64)
        frac = np.linspace(0.02, 0.99, 25)[:, None, None]
        seg = o + frac * (pts - o)
        assert scene_sdf(scene, seg, 0.3).min() > 0


# --------------------------------------------------------------------------------------------
# Determinism, batching.
# --------------------------------------------------------------------------------------------


def test_make_clip_is_deterministic_and_consistent():
    a = make_clip(7, image_hw=HW, num_frames=4, kind="indoor")
    b = make_clip(7, image_hw=HW, num_frames=4, kind="indoor")
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key]
    assert a["frames"].shape == (4, 32, 32, 3) and a["frames"].dtype == np.uint8
    assert a["depth"].shape == (4, 32, 32) and a["depth"].dtype == np.float32
    assert a["dynamic_mask"].dtype == bool and a["sky_mask"].dtype == bool
    assert a["intrinsics"].shape == (4, 3, 3) and a["cam2world"].shape == (4, 4, 4)
    check_pose(a["cam2world"])
    assert a["scene_id"] == "indoor-00000007" and isinstance(a["caption"], str)
    assert (a["depth"] > 0).all() and not a["sky_mask"].any()
    # The batched program agrees with single-view renders.
    scene = sample_scene(7, "indoor")
    for i in (0, 3):
        one = render(scene, a["intrinsics"][i], a["cam2world"][i], HW, t=float(a["times"][i]))
        np.testing.assert_allclose(np.asarray(one["depth"]), a["depth"][i], rtol=1e-5)
        assert np.mean(np.abs(np.round(np.asarray(one["rgb"]) * 255) - a["frames"][i]) > 1) < 0.01
    # Other seeds give other clips.
    c = make_clip(8, image_hw=HW, num_frames=4, kind="indoor")
    assert not np.array_equal(a["frames"], c["frames"])


def test_vmap_over_stacked_scenes_matches_single_renders():
    scenes = [sample_scene(11, "indoor"), sample_scene(12, "outdoor")]
    poses = np.stack([random_trajectory(s, 0, 1)[0] for s in scenes])
    stacked = stack_scenes(scenes)
    fn = jax.jit(jax.vmap(lambda s, P: render(s, jnp.asarray(K), P, HW, t=0.25)["depth"]))
    batched = np.asarray(fn(stacked, poses))
    for i, s in enumerate(scenes):
        single = np.asarray(render(s, K, poses[i], HW, t=0.25)["depth"])
        np.testing.assert_allclose(batched[i], single, rtol=1e-5)


def test_scene_sampling_is_deterministic():
    for kind in ("indoor", "outdoor"):
        a, b = sample_scene(21, kind), sample_scene(21, kind)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, sample_scene(22, kind))


# --------------------------------------------------------------------------------------------
# Cameras never enter geometry; loops close exactly.
# --------------------------------------------------------------------------------------------


def _inside_solid(scene, p, t):
    """Independent point-in-solid test at time t (boxes, spheres, cylinders; behind planes)."""
    t = float(t)
    for g in GROUPS:
        prims = scene.group(g)
        for j in np.nonzero(np.asarray(prims.mask))[0]:
            c = np.asarray(prims.center[j], np.float64)
            arg = 2 * math.pi * float(prims.frequency[j]) * t + np.asarray(prims.phase[j], np.float64)
            c = c + np.asarray(prims.velocity[j], np.float64) * t
            c = c + np.asarray(prims.amplitude[j], np.float64) * np.sin(arg)
            a = float(prims.spin[j]) * t
            Ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
            R = Ry @ np.asarray(prims.rotation[j], np.float64)
            q = R.T @ (p - c)
            s = np.asarray(prims.size[j], np.float64)
            if g == "planes" and q[2] > 0:
                return True
            if g == "boxes" and np.all(np.abs(q) < s):
                return True
            if g == "spheres" and np.linalg.norm(q) < s[0]:
                return True
            if g == "cylinders" and math.hypot(q[0], q[2]) < s[0] and abs(q[1]) < s[1]:
                return True
    return False


def test_random_cameras_never_start_or_pass_inside_geometry():
    times = np.arange(9) / 16.0
    for seed in range(12):
        for kind in ("indoor", "outdoor"):
            scene = sample_scene(seed, kind)
            lo, hi = np.asarray(scene.bounds)
            for traj in ("walk", "loop", "push_in"):
                path = random_trajectory(scene, seed, 9, kind=traj, times=times)
                eyes = path[:, :3, 3].astype(np.float64)
                assert np.all(eyes >= lo - 1e-5) and np.all(eyes <= hi + 1e-5)
                # dense samples between frames, each at its own time
                for i in range(8):
                    for a in (0.0, 0.5):
                        p = eyes[i] * (1 - a) + eyes[i + 1] * a
                        tt = times[i] * (1 - a) + times[i + 1] * a
                        assert not _inside_solid(scene, p, tt), (seed, kind, traj, i)
                assert scene_sdf(scene, eyes, times).min() >= 0.3 - 1e-6


def test_random_trajectory_is_deterministic_and_level():
    scene = sample_scene(3, "indoor")
    a = random_trajectory(scene, 5, 17)
    np.testing.assert_array_equal(a, random_trajectory(scene, 5, 17))
    assert not np.array_equal(a, random_trajectory(scene, 6, 17))
    check_pose(a)
    # level cameras: the image x axis is horizontal in the y-down world
    assert np.abs(a[:, 1, 0]).max() < 1e-5
    # smooth: no jumps between frames
    steps = np.linalg.norm(np.diff(a[:, :3, 3], axis=0), axis=-1)
    assert steps.max() < 0.2


def test_loops_return_exactly_to_the_start():
    for seed in range(4):
        for kind in ("indoor", "outdoor"):
            scene = sample_scene(seed, kind)
            for traj, kw in (("loop", {}), ("orbit", dict(distance=0.5)), ("pan_left", dict(loop=True))):
                path = random_trajectory(scene, seed, 17, kind=traj, **kw)
                assert path.dtype == np.float32 and path.shape == (17, 4, 4)
                np.testing.assert_array_equal(path[-1], path[0])
                assert np.abs(path[8] - path[0]).max() > 1e-3  # it did go somewhere


# --------------------------------------------------------------------------------------------
# Masks.
# --------------------------------------------------------------------------------------------


def test_dynamic_mask_matches_analytic_moving_sphere():
    b = SceneBuilder(DEFAULT_CAPACITY, np.random.default_rng(0))
    planes = _room(b)
    box_c, box_h = np.array([0.6, -0.4, 2.0]), np.array([0.4, 0.4, 0.4])
    b.add("boxes", box_c, box_h, Material("plain", "gray"), b.new_object(), "crate")
    sph_c, r = np.array([-0.3, -1.0, 2.3]), 0.35
    amp, freq, phase = np.array([0.9, 0.0, 0.2]), 0.4, np.array([0.3, 0.0, 1.1])
    ball = b.new_object()
    b.add("spheres", sph_c, r, Material("plain", "red"), ball, "ball", amplitude=amp, frequency=freq, phase=phase)
    scene = b.to_scene("indoor")
    eye = np.array([0.1, -1.2, -0.6])
    c2w = _pose(eye, [0.0, -0.8, 2.5])
    o, d = _rays64(K, c2w, HW)
    masks = []
    for t in (0.0, 0.9):
        out = render(scene, K, c2w, HW, t=t)
        # independent float64 nearest-surface computation
        c = sph_c + amp * np.sin(2 * math.pi * freq * t + phase)
        oc = o - c
        bq = d @ oc
        a = (d * d).sum(-1)
        disc = bq**2 - a * (oc @ oc - r * r)
        t_sph = np.where(disc >= 0, (-bq - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
        t1 = (box_c - box_h - o) / d
        t2 = (box_c + box_h - o) / d
        near = np.minimum(t1, t2).max(-1)
        far = np.maximum(t1, t2).min(-1)
        t_box = np.where((near <= far) & (near > 0), near, np.inf)
        t_other = np.minimum(t_box, _planes_depth64(o, d, planes))
        expect = t_sph < t_other
        dyn = np.asarray(out["dynamic"])
        # pixels whose classification is numerically ambiguous: grazing the silhouette or a tie
        ambiguous = (np.abs(disc) < 1e-4 * a * r * r) | (np.abs(t_sph - t_other) < 1e-4 * t_other)
        assert np.array_equal(dyn[~ambiguous], expect[~ambiguous])
        assert ambiguous.sum() <= 2
        assert 20 <= expect.sum() < expect.size // 2
        assert np.all(np.asarray(out["object_id"])[dyn] == ball)
        np.testing.assert_allclose(np.asarray(out["depth"])[dyn], t_sph[dyn], rtol=1e-5)
        masks.append(dyn)
    assert not np.array_equal(masks[0], masks[1])  # the object moved


def test_sky_mask_only_outdoors():
    for seed in range(3):
        indoor = sample_scene(seed, "indoor")
        c2w = random_trajectory(indoor, seed, 1)[0]
        out = render(indoor, K, c2w, HW)
        assert not np.asarray(out["sky"]).any()
        assert (np.asarray(out["depth"]) > 0).all()
    outdoor = sample_scene(1, "outdoor")
    eye = random_trajectory(outdoor, 1, 1)[0][:3, 3]
    c2w = _pose(eye, eye + np.array([1.0, -0.25, 0.3]))  # looking slightly up
    out = render(outdoor, K, c2w, HW)
    sky = np.asarray(out["sky"])
    depth = np.asarray(out["depth"])
    assert 0.1 < sky.mean() < 0.9
    assert np.all(depth[sky] == 0) and np.all(depth[~sky] > 0)
    np.testing.assert_array_equal(np.asarray(out["object_id"])[sky], -1)
    # sky pixels look above the horizon: their rays point up (world -y)
    _, d = _rays64(K, c2w, HW)
    assert np.all(d[..., 1][sky] < 0)
    # depth stays finite and bounded near the horizon (the ground is a 400 m disc)
    assert depth.max() < 1e3


def test_shadows_darken_exactly_the_occluded_floor():
    b = SceneBuilder(DEFAULT_CAPACITY, np.random.default_rng(0))
    _room(b, material=Material("plain", "white"))
    b.add("boxes", (0.0, -1.0, 2.0), (0.5, 0.05, 0.5), Material("plain", "red"), b.new_object(), "table")
    scene = b.to_scene("indoor", light=(0.0, -2.6, 2.0, 1.0), light_falloff=0.0)
    c2w = _pose([0.0, -1.8, -0.5], [0.0, 0.0, 2.0])
    lit = render(scene, K, c2w, HW)
    shaded = render(scene, K, c2w, HW, shadows=True)
    np.testing.assert_array_equal(np.asarray(lit["depth"]), np.asarray(shaded["depth"]))
    floor = np.asarray(lit["object_id"]) == 0
    pts = np.asarray(unproject_grid(lit["depth"], K, c2w), np.float64)
    # the light is straight above the slab's centre: the umbra on the floor is the slab's
    # footprint scaled by (light height) / (light height - slab height)
    scale = 2.6 / (2.6 - 1.05)
    rel = np.abs(pts[..., [0, 2]] - np.array([0.0, 2.0]))
    in_shadow = floor & np.all(rel < 0.5 * scale - 0.03, -1)
    out_shadow = floor & np.any(rel > 0.5 * scale + 0.03, -1)
    assert in_shadow.sum() > 10 and out_shadow.sum() > 10
    drop = np.asarray(lit["rgb"]).sum(-1) - np.asarray(shaded["rgb"]).sum(-1)
    assert np.all(drop[in_shadow] > 0.1)
    np.testing.assert_allclose(drop[out_shadow], 0.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Captions and input validation.
# --------------------------------------------------------------------------------------------


def test_captions_mention_the_objects_present():
    for seed in range(6):
        for kind in ("indoor", "outdoor"):
            scene = sample_scene(seed, kind)
            text = caption(scene)
            classes = set()
            moving = False
            for g in GROUPS:
                p = scene.group(g)
                m = np.asarray(p.mask)
                classes |= {CLASSES[i] for i in np.asarray(p.object_class)[m]}
                moving |= bool((np.abs(np.asarray(p.amplitude)[m]).sum(-1) > 0).any())
            for cls in classes - {"floor", "ceiling", "wall", "ground", "lamp"}:
                assert cls in text, (cls, text)
            if "lamp" in classes:
                assert "floor lamp" in text
            assert ("move" in text) == moving
            assert text.startswith("A room" if kind == "indoor" else "An outdoor scene")
            posters = [o for o in scene_objects(scene) if o["cls"] == "poster"]
            assert text.count("poster of") == len(posters)


def test_bad_inputs_raise_clear_errors():
    scene = sample_scene(0, "indoor")
    c2w = random_trajectory(scene, 0, 1)[0]
    with pytest.raises(ValueError, match="kind"):
        sample_scene(0, "underwater")
    with pytest.raises(ValueError, match="seed"):
        sample_scene(-1)
    with pytest.raises(CameraError, match="intrinsics"):
        render(scene, np.eye(4), c2w, HW)
    reflected = c2w.copy()
    reflected[:3, 0] *= -1
    with pytest.raises(CameraError, match="cam2world"):
        render(scene, K, reflected, HW)
    with pytest.raises(ValueError, match="image_hw"):
        render(scene, K, c2w, (32, 0))
    with pytest.raises(ValueError, match="times"):
        render_frames(scene, K[None], c2w[None], HW, times=np.zeros(2))
    with pytest.raises(ValueError, match="kind"):
        random_trajectory(scene, 0, 9, kind="teleport")
    with pytest.raises(ValueError, match="capacity"):
        sample_scene(0, capacity={"tori": 3})
